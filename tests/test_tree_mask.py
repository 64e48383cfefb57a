"""The verify mask handed to the attention backends, and the CPU attention that reads it.

SGLang's custom-mask semantics (its EAGLE tree verify, FlashInfer's
``custom_mask``): per request, row-major [N, prefix_len + N] booleans, True =
query node i may attend to that key. Checked against a dense reference built
by walking parents; then the CPU verify attention with that mask against
attention computed query by query over exactly the allowed keys.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sgl_dflash.tree as tree_module
from sgl_dflash.tree import DraftTopKHead, draft_topk, make_tree
from sgl_dflash.tree_mask import tree_custom_mask, verify_mask
from sgl_dflash.verify_attention import block_verify_attention


def random_tree(prefix_lens: list[int], positions: int, k: int, n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    bs = len(prefix_lens)
    probs, ids = torch.randn(bs, positions, 30, generator=gen).softmax(-1).topk(k, dim=-1)
    root = torch.randint(0, 30, (bs,), generator=gen)
    return make_tree(root, ids, probs, n, torch.tensor(prefix_lens))


def dense_reference(tree, prefix_lens: list[int]) -> list[torch.Tensor]:
    """Per request [N, prefix + N]: the whole prefix, then node i's ancestors and itself."""
    out = []
    for b, prefix in enumerate(prefix_lens):
        n = tree.num_nodes
        mask = torch.zeros(n, prefix + n, dtype=torch.bool)
        mask[:, :prefix] = True
        for i in range(n):
            j = i
            while j >= 0:
                mask[i, prefix + j] = True
                j = int(tree.parents[b, j])
        out.append(mask)
    return out


@pytest.mark.parametrize("positions,k,n", [(3, 2, 7), (15, 4, 32), (7, 1, 8), (15, 8, 64), (5, 3, 1)])
def test_custom_mask_matches_dense_reference(positions, k, n):
    prefix_lens = [5, 0, 17]
    tree = random_tree(prefix_lens, positions, k, n, seed=n)
    total = sum(n * (p + n) for p in prefix_lens)
    flat = tree_custom_mask(tree, torch.tensor(prefix_lens), total)
    assert flat.shape == (total,) and flat.dtype == torch.bool
    start = 0
    for b, ref in enumerate(dense_reference(tree, prefix_lens)):
        assert torch.equal(flat[start : start + ref.numel()].view_as(ref), ref), b
        start += ref.numel()
    # The tree tables agree with the same walk: depth = number of strict ancestors.
    assert torch.equal(tree.ancestors.sum(-1) - 1, tree.depths)
    assert torch.equal(tree.positions, torch.tensor(prefix_lens)[:, None] + tree.depths)


def test_chain_needs_no_custom_mask():
    prefix_lens = [4, 9]
    chain = random_tree(prefix_lens, 7, 1, 8, seed=0)
    assert verify_mask(chain, 1, torch.tensor(prefix_lens), sum(prefix_lens)) is None
    root_alone = random_tree(prefix_lens, 7, 4, 1, seed=0)  # an undrafted step of a K=4 server
    assert verify_mask(root_alone, 4, torch.tensor(prefix_lens), sum(prefix_lens)) is None
    # ... because a chain's ancestor mask is the causal mask.
    for ref, prefix in zip(dense_reference(chain, prefix_lens), prefix_lens):
        causal = torch.ones(8, prefix + 8, dtype=torch.bool).tril(diagonal=prefix)
        assert torch.equal(ref, causal)


def pool_and_queries(prefix_lens: list[int], new: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    hq, hk, d = 4, 2, 8
    k_pool, v_pool = torch.randn(128, hk, d, generator=gen), torch.randn(128, hk, d, generator=gen)
    req_to_token = torch.randperm(128, generator=gen)[: 3 * 40].view(3, 40)
    q = torch.randn(len(prefix_lens) * new, hq, d, generator=gen)
    return q, k_pool, v_pool, req_to_token


def attend_one(q_row, k_pool, v_pool, locs, allowed, scale):
    """One query over exactly the allowed keys, heads expanded for GQA."""
    keys = k_pool[locs[allowed]].repeat_interleave(q_row.shape[0] // k_pool.shape[1], 1)
    vals = v_pool[locs[allowed]].repeat_interleave(q_row.shape[0] // v_pool.shape[1], 1)
    weights = F.softmax(torch.einsum("hd,khd->hk", q_row, keys) * scale, dim=-1)
    return torch.einsum("hk,khd->hd", weights, vals)


@pytest.mark.parametrize("n", [10, 1])  # 1: the root alone (an undrafted step), attended unmasked
def test_tree_attention_matches_dense_reference(n):
    prefix_lens, rows = [3, 0, 11], [2, 0, 1]
    tree = random_tree(prefix_lens, 6, 3, n, seed=3)
    q, k_pool, v_pool, req_to_token = pool_and_queries(prefix_lens, n, seed=3)
    total = sum(n * (p + n) for p in prefix_lens)
    mask = tree_custom_mask(tree, torch.tensor(prefix_lens), total)
    out = block_verify_attention(
        q, k_pool, v_pool, req_to_token, torch.tensor(rows), torch.tensor(prefix_lens),
        causal=True, scaling=0.3, custom_mask=mask,
    )
    for b, (row, prefix, ref_mask) in enumerate(zip(rows, prefix_lens, dense_reference(tree, prefix_lens))):
        locs = req_to_token[row, : prefix + n]
        for i in range(n):
            expected = attend_one(q[b * n + i], k_pool, v_pool, locs, ref_mask[i], 0.3)
            torch.testing.assert_close(out[b * n + i], expected)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("new", [4, 1])
def test_block_attention_causal_and_bidirectional(causal, new):
    prefix_lens, rows = [3, 0, 5], [2, 0, 1]
    q, k_pool, v_pool, req_to_token = pool_and_queries(prefix_lens, new, seed=5)
    out = block_verify_attention(
        q, k_pool, v_pool, req_to_token, torch.tensor(rows), torch.tensor(prefix_lens),
        causal=causal, scaling=0.3,
    )
    for b, (row, prefix) in enumerate(zip(rows, prefix_lens)):
        locs = req_to_token[row, : prefix + new]
        for i in range(new):
            allowed = torch.arange(prefix + new) <= prefix + i if causal else torch.ones(prefix + new, dtype=torch.bool)
            expected = attend_one(q[b * new + i], k_pool, v_pool, locs, allowed, 0.3)
            torch.testing.assert_close(out[b * new + i], expected)


def test_draft_head_in_chunks_equals_one_pass(monkeypatch):
    """A big batch's top-K is computed a chunk of rows at a time, with the same result."""
    torch.manual_seed(0)
    lm_head, hidden = torch.randn(50, 8), torch.randn(7 * 4, 8)  # 7 requests, block 4
    monkeypatch.setattr(tree_module, "ROWS_PER_CHUNK", 5)
    head = DraftTopKHead(lm_head, block_size=4, topk=3, max_bs=8)
    head(hidden)
    ids, probs = head.read(7)
    want_ids, want_probs = draft_topk(hidden.view(7, 4, 8)[:, 1:].reshape(-1, 8), lm_head, 3)
    assert torch.equal(ids.reshape(-1, 3), want_ids)
    assert torch.allclose(probs.reshape(-1, 3), want_probs)
