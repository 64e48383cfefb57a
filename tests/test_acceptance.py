"""The accept policy over a tree: greedy walks, and sampled walks that keep the target's distribution."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sampling_reference import reference_probs
from scipy.stats import chisquare

from sgl_dflash.acceptance import target_choices, walk_tree
from sgl_dflash.tree import make_tree

NO_TOP_K = 1 << 30


class Info(SimpleNamespace):
    """The fields of SGLang's SamplingBatchInfo that the accept step reads."""

    def __len__(self) -> int:
        return self.temperatures.shape[0]


def info(bs: int, temperature=1.0, top_k=NO_TOP_K, top_p=1.0, min_p=0.0) -> Info:
    return Info(
        temperatures=torch.full((bs, 1), temperature),
        top_ks=torch.full((bs,), top_k, dtype=torch.int32),
        top_ps=torch.full((bs,), top_p),
        min_ps=torch.full((bs,), min_p),
        need_top_k_sampling=top_k < NO_TOP_K,
        need_top_p_sampling=top_p < 1.0,
        need_min_p_sampling=min_p > 0.0,
        is_all_greedy=False,
        sampling_seed=None,
    )


def fixed_tree(bs: int):
    """Top-2 drafts at 3 positions, 9 nodes (token(node)):

    root 5 -> 0(1) -> 2(2) -> 4(4)        0(1) -> 3(7) -> 4(8)
    root 5 -> 1(3) -> 2(5) -> 4(6)
    Nodes 3 and 7 are non-first children; 5, 6 and 8 lie below them.
    """
    ids = torch.tensor([[0, 1], [2, 3], [4, 5]]).expand(bs, 3, 2)
    probs = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.8, 0.2]]).expand(bs, 3, 2)
    tree = make_tree(torch.full((bs,), 5), ids, probs, 9, torch.zeros(bs, dtype=torch.long))
    assert tree.tokens[0].tolist() == [5, 0, 2, 1, 4, 2, 4, 3, 4]
    assert tree.parents[0].tolist() == [-1, 0, 1, 0, 2, 3, 5, 1, 7]
    return tree


def test_greedy_walk_follows_the_targets_choices():
    tree = fixed_tree(2)
    choices = torch.tensor([[1, 0, 0, 2, 0, 0, 0, 0, 0],  # root -> 1 (node 3) -> 2 (node 5) -> then 0: no such child
                            [0, 3, 0, 0, 0, 0, 0, 4, 1]])  # root -> 0 -> 3 (node 7) -> 4 (node 8) -> bonus 1
    acc = walk_tree(tree, choices)
    assert acc.accept_len.tolist() == [2, 3]
    assert acc.path.tolist() == [[0, 3, 5, -1], [0, 1, 7, 8]]
    assert acc.bonus.tolist() == [0, 1]
    assert acc.out_tokens.tolist() == [[1, 2, 0, 0], [0, 3, 4, 1]]
    assert target_choices(torch.eye(6)[[3, 1]], None, torch.zeros(2)).tolist() == [[3], [1]]


@pytest.mark.parametrize("params", [dict(temperature=1.0), dict(temperature=0.7, top_k=4),
                                    dict(temperature=1.3, top_p=0.8), dict(temperature=1.0, min_p=0.2)])
def test_target_choices_follow_sglang_sampler_semantics(params):
    gen = torch.Generator().manual_seed(1)
    row = torch.randn(8, generator=gen) * 2
    n = 20000
    picks = target_choices(row.repeat(n, 1), info(n, **params), torch.zeros(n, dtype=torch.long)).view(-1)
    full = dict(temperature=1.0, top_k=NO_TOP_K, top_p=1.0, min_p=0.0) | params
    assert_follows(picks, reference_probs(row, **full).float())


@pytest.mark.parametrize("params", [dict(temperature=1.0), dict(temperature=0.8, top_k=4, top_p=0.9)])
def test_sampled_tree_walk_is_lossless(params):
    """Committed tokens follow the target's conditional at every depth, through branch nodes.

    Each node has its own target distribution (its logits row). Given that the
    first committed tokens took the walk to node c, the next committed token
    must follow node c's distribution, whichever child (first or not) c was.
    """
    n, vocab = 30000, 6
    tree = fixed_tree(n)
    gen = torch.Generator().manual_seed(3)
    node_logits = torch.randn(9, vocab, generator=gen) * 1.2
    torch.manual_seed(0)
    choices = target_choices(node_logits.repeat(n, 1), info(n, **params), tree.positions.reshape(-1))
    acc = walk_tree(tree, choices)
    full = dict(temperature=1.0, top_k=NO_TOP_K, top_p=1.0, min_p=0.0) | params
    ref = [reference_probs(r, **full).float() for r in node_logits]
    tokens, parents, depths = tree.tokens[0].tolist(), tree.parents[0].tolist(), tree.depths[0].tolist()
    assert_follows(acc.out_tokens[:, 0], ref[0])
    checked_branch = False
    for node in range(1, 9):
        path = [node]
        while parents[path[-1]] > 0:
            path.append(parents[path[-1]])
        prefix = torch.tensor([tokens[i] for i in reversed(path)])
        reached = (acc.out_tokens[:, : len(prefix)] == prefix).all(1) & (acc.commit_lens > len(prefix))
        if int(reached.sum()) < 2000:
            continue
        assert_follows(acc.out_tokens[reached, len(prefix)], ref[node])
        checked_branch |= depths[node] >= 2 and any(tokens[i] in (1, 3) for i in path)
    assert checked_branch  # a depth >= 2 node under a non-first child was tested


def assert_follows(samples: torch.Tensor, probs: torch.Tensor) -> None:
    counts = torch.bincount(samples.long(), minlength=probs.numel()).double()
    support = probs > 0
    assert counts[~support].sum() == 0, "sampled a token the target's sampler can never emit"
    if int(support.sum()) == 1:
        return  # one possible token, and only it was sampled
    expected = probs[support].double()
    expected = expected / expected.sum() * counts[support].sum()
    assert chisquare(counts[support], expected).pvalue > 1e-4
