"""The Triton kernels on a real GPU and FlashInfer with our tree mask (the GPU verify path).

FlashInfer is handed exactly what the worker hands it through SGLang: the
flat tree mask of sgl_dflash.tree_mask (per request [N, prefix + N],
row-major, True = may attend). Its output must equal attention computed
query by query over exactly the allowed keys.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sgl_dflash.kernels.tree_accept import tree_accept_torch, tree_accept_triton
from sgl_dflash.kernels.tree_build import build_tree_torch, build_tree_triton
from sgl_dflash.tree import make_tree
from sgl_dflash.tree_mask import tree_custom_mask


def test_tree_kernels_on_cuda_match_references():
    gen = torch.Generator(device="cuda").manual_seed(0)
    for positions, k, n in [(15, 1, 16), (15, 4, 32), (15, 8, 64), (7, 2, 1), (3, 16, 40)]:
        logits = torch.randn(33, positions, 500, device="cuda", generator=gen)
        probs, ids = logits.softmax(-1).topk(k, dim=-1)
        root = torch.randint(0, 500, (33,), device="cuda", generator=gen)
        for ref, got in zip(build_tree_torch(root, ids, probs, n), build_tree_triton(root, ids, probs, n)):
            assert torch.equal(ref, got), (positions, k, n)
        tree = make_tree(root, ids, probs, n, torch.zeros(33, dtype=torch.long, device="cuda"))
        choices = torch.where(torch.rand(33, n, device="cuda", generator=gen) < 0.8,
                              tree.tokens.roll(-1, dims=1), 0)
        ref = tree_accept_torch(tree.tokens, tree.parents, tree.depths, choices, tree.ancestors, tree.path_table)
        got = tree_accept_triton(tree.tokens, tree.parents, choices, tree.max_depth)
        assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])


def test_flashinfer_tree_mask_matches_dense_attention():
    flashinfer = pytest.importorskip("flashinfer")  # absent in `launch/test_gpu.sh --bare`

    gen = torch.Generator(device="cuda").manual_seed(1)
    prefix_lens, n, hq, hk, d = [5, 0, 37], 16, 8, 2, 64
    probs, ids = torch.randn(3, 15, 100, device="cuda", generator=gen).softmax(-1).topk(4, dim=-1)
    tree = make_tree(torch.zeros(3, dtype=torch.long, device="cuda"), ids, probs, n,
                     torch.tensor(prefix_lens, device="cuda"))
    kv_lens = [p + n for p in prefix_lens]
    total = sum(n * k for k in kv_lens)
    mask = tree_custom_mask(tree, torch.tensor(prefix_lens, device="cuda"), total)

    pool_k = torch.randn(sum(kv_lens), 1, hk, d, device="cuda", dtype=torch.float16, generator=gen)
    pool_v = torch.randn_like(pool_k)
    q = torch.randn(3 * n, hq, d, device="cuda", dtype=torch.float16, generator=gen)
    kv_indptr = torch.tensor([0, *torch.tensor(kv_lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    qo_indptr = torch.arange(0, 3 * n + 1, n, dtype=torch.int32, device="cuda")
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
        torch.empty(128 * 1024 * 1024, dtype=torch.uint8, device="cuda"), "NHD"
    )
    wrapper.plan(qo_indptr, kv_indptr, torch.arange(sum(kv_lens), dtype=torch.int32, device="cuda"),
                 torch.ones(3, dtype=torch.int32, device="cuda"), hq, hk, d, 1,
                 custom_mask=mask, q_data_type=torch.float16, kv_data_type=torch.float16)
    out = wrapper.run(q, (pool_k, pool_v))

    start = 0
    for b, kv in enumerate(kv_lens):
        rows = mask[start : start + n * kv].view(n, kv)
        start += n * kv
        keys = pool_k[kv_indptr[b] : kv_indptr[b + 1], 0].float().repeat_interleave(hq // hk, 1)
        vals = pool_v[kv_indptr[b] : kv_indptr[b + 1], 0].float().repeat_interleave(hq // hk, 1)
        for i in range(n):
            qi = q[b * n + i].float()
            scores = torch.einsum("hd,khd->hk", qi, keys[rows[i]]) / d**0.5
            ref = torch.einsum("hk,khd->hd", F.softmax(scores, -1), vals[rows[i]])
            torch.testing.assert_close(out[b * n + i].float(), ref, atol=2e-2, rtol=2e-2)
