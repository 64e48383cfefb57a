"""The accept policies: greedy prefix matching and lossless rejection sampling."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from scipy.stats import chisquare

from sampling_reference import reference_probs

from sgl_dflash.acceptance import accept_by_rejection, accept_greedy, target_probs


def sampling(bs, temperature=1.0, top_k=1 << 30, top_p=1.0, min_p=0.0):
    return SimpleNamespace(
        temperatures=torch.full((bs, 1), temperature),
        top_ks=torch.full((bs,), top_k, dtype=torch.int32),
        top_ps=torch.full((bs,), top_p),
        min_ps=torch.full((bs,), min_p),
        need_top_k_sampling=top_k < 1 << 30,
        need_top_p_sampling=top_p < 1.0,
        need_min_p_sampling=min_p > 0.0,
        is_all_greedy=False,
    )


@pytest.mark.parametrize(
    "params", [dict(temperature=1.0), dict(temperature=0.7, top_k=3), dict(temperature=1.3, top_p=0.8),
               dict(temperature=1.0, min_p=0.2)]
)
def test_target_probs_match_sampler_semantics(params):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 11, generator=gen) * 2
    full = dict(temperature=1.0, top_k=1 << 30, top_p=1.0, min_p=0.0) | params
    got = target_probs(logits, sampling(2, **full), block=3)
    for row in range(6):
        torch.testing.assert_close(got[row], reference_probs(logits[row], **full).float())


def test_greedy_policy():
    cand = torch.tensor([[5, 1, 2], [5, 3, 3]])
    logits = torch.nn.functional.one_hot(torch.tensor([1, 2, 9, 1, 4, 9]), 10).float()
    acc = accept_greedy(cand, logits.argmax(-1))
    assert acc.accept_len.tolist() == [2, 0]
    assert acc.bonus.tolist() == [9, 1]
    assert acc.commit_lens.tolist() == [3, 1]


@pytest.mark.parametrize("params", [dict(temperature=1.0), dict(temperature=0.8, top_k=4, top_p=0.9)])
def test_rejection_sampling_is_lossless(params):
    """Tokens from the spec sampler follow the target distribution at every depth.

    Block of 3 with fixed drafts; the distribution of the first committed token
    must be p_0, and of the second given the first was the accepted draft, p_1.
    """
    vocab, n = 6, 40000
    gen = torch.Generator().manual_seed(7)
    row_logits = torch.randn(3, vocab, generator=gen) * 1.5
    full = dict(temperature=1.0, top_k=1 << 30, top_p=1.0, min_p=0.0) | params
    ref = torch.stack([reference_probs(r, **full).float() for r in row_logits])
    draft = int(ref[0].argmax())  # a draft the target likes, so both paths occur
    cand = torch.tensor([[0, draft, draft]]).repeat(n, 1)
    logits = row_logits.repeat(n, 1)
    acc = accept_by_rejection(cand, logits, sampling(n, **full), generator=gen)

    first = acc.out_tokens[:, 0]
    assert_follows(first, ref[0])
    # The residual excludes the draft, so first == draft means it was accepted.
    kept = first == draft
    assert 0 < int(kept.sum()) < n
    assert_follows(acc.out_tokens[kept, 1], ref[1])


def assert_follows(samples: torch.Tensor, probs: torch.Tensor) -> None:
    counts = torch.bincount(samples, minlength=probs.numel()).double()
    support = probs > 0
    assert counts[~support].sum() == 0
    expected = probs[support].double()
    expected = expected / expected.sum() * counts[support].sum()
    assert chisquare(counts[support], expected).pvalue > 1e-4
