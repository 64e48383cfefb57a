"""The Triton kernels on a real GPU and FlashInfer with our tree mask (the GPU verify path).

FlashInfer is handed exactly what the worker hands it through SGLang: the
flat tree mask of sgl_dflash.tree_mask (per request [N, prefix + N],
row-major, True = may attend). Its output must equal attention computed
query by query over exactly the allowed keys. So must the split verify
attention measured by bench/gpu_mask_cost.py (the prefix without a mask,
the tree's own keys with its ancestors, merged), eagerly and replayed in a
CUDA graph.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sgl_dflash.kernels.custom_mask import custom_mask_torch, custom_mask_triton
from sgl_dflash.kernels.tree_accept import tree_accept_torch, tree_accept_triton
from sgl_dflash.kernels.tree_build import build_tree_torch, build_tree_triton
from sgl_dflash.kernels.tree_tables import tree_tables_torch, tree_tables_triton
from sgl_dflash.step import DraftTree
from sgl_dflash.tree import DraftTopKHead, draft_topk, make_tree
from sgl_dflash.tree_mask import verify_mask


def _capture(run):
    """run() warmed up on a side stream, then captured in a CUDA graph: (graph, run's output)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # what the default stream queued lands before the warm-up
    with torch.cuda.stream(stream):
        run()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    return graph, out


def test_tree_kernels_on_cuda_match_references():
    gen = torch.Generator(device="cuda").manual_seed(0)
    for positions, k, n in [(15, 1, 16), (15, 4, 32), (15, 8, 64), (7, 2, 1), (3, 16, 40)]:
        logits = torch.randn(33, positions, 500, device="cuda", generator=gen)
        probs, ids = logits.softmax(-1).topk(k, dim=-1)
        root = torch.randint(0, 500, (33,), device="cuda", generator=gen)
        built = build_tree_torch(root, ids, probs, n)
        for ref, got in zip(built, build_tree_triton(root, ids, probs, n)):
            assert torch.equal(ref, got), (positions, k, n)
        prefix = torch.randint(0, 3000, (33,), device="cuda", generator=gen)
        depth = min(positions, n - 1)
        for ref, got in zip(tree_tables_torch(*built[:3], ids[:, :, 0], prefix, depth),
                            tree_tables_triton(*built[:3], ids[:, :, 0], prefix, depth)):
            assert torch.equal(ref, got), ("tables", positions, k, n)
        tree = make_tree(root, ids, probs, n, prefix)  # the Triton tables on CUDA
        for view in (tree, tree.prefix(max(1, n // 2))):
            total = view.num_nodes * (int(prefix.sum()) + 33 * view.num_nodes)
            assert torch.equal(custom_mask_torch(view.ancestors, prefix, total),
                               custom_mask_triton(view.ancestors, prefix, total)), ("mask", positions, k, n)
        choices = torch.where(torch.rand(33, n, device="cuda", generator=gen) < 0.8,
                              tree.tokens.roll(-1, dims=1), 0)
        ref = tree_accept_torch(tree.tokens, tree.parents, tree.depths, choices, tree.ancestors, tree.path_table)
        got = tree_accept_triton(tree.tokens, tree.parents, choices, tree.max_depth)
        assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])


def test_draft_topk_head_in_cuda_graph_matches_eager():
    """The draft graph's top-K head (captured with the draft pass on GPU): replayed with new
    hidden states, its fixed buffers hold what the eager computation gives; 80 requests of
    block 16 take two chunks of rows."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    vocab, width, block, topk, bs = 32000, 256, 16, 4, 80
    lm_head = torch.randn(vocab, width, device="cuda", generator=gen)
    head = DraftTopKHead(lm_head, block, topk, max_bs=bs)
    hidden = torch.zeros(bs * block, width, device="cuda")
    graph, _ = _capture(lambda: head(hidden))
    for _ in range(2):
        hidden.copy_(torch.randn(hidden.shape, device="cuda", generator=gen))
        graph.replay()
        ids, probs = head.read(bs)
        want_ids, want_probs = draft_topk(hidden.view(bs, block, width)[:, 1:].reshape(-1, width), lm_head, topk)
        assert torch.equal(ids.reshape(-1, topk), want_ids)
        torch.testing.assert_close(probs.reshape(-1, topk), want_probs)


HQ, HK, D = 8, 2, 64  # query heads, KV heads (GQA), head dim


def _tree_mask(gen: torch.Generator, topk: int, n: int, prefix_lens: list[int]) -> tuple[DraftTree, torch.Tensor]:
    """A random draft tree and the flat verify mask the worker hands SGLang for it."""
    bs = len(prefix_lens)
    probs, ids = torch.randn(bs, 15, 100, device="cuda", generator=gen).softmax(-1).topk(topk, dim=-1)
    prefix = torch.tensor(prefix_lens, device="cuda")
    tree = make_tree(torch.zeros(bs, dtype=torch.long, device="cuda"), ids, probs, n, prefix)
    mask = verify_mask(tree, topk, prefix, sum(prefix_lens))
    assert mask is not None
    return tree, mask


def _indptrs(n: int, prefix_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qo_indptr [bs + 1], kv_indptr [bs + 1], kv_indices [sum kv]: page size 1, KV laid out in order."""
    kv_lens = torch.tensor(prefix_lens) + n
    kv_indptr = torch.cat([torch.zeros(1, dtype=torch.long), kv_lens.cumsum(0)])
    qo_indptr = torch.arange(0, len(prefix_lens) * n + 1, n)
    return (qo_indptr.int().cuda(), kv_indptr.int().cuda(),
            torch.arange(int(kv_indptr[-1]), dtype=torch.int32, device="cuda"))


def _plan(wrapper, n: int, prefix_lens: list[int], mask: torch.Tensor, dtype: torch.dtype) -> None:
    qo_indptr, kv_indptr, kv_indices = _indptrs(n, prefix_lens)
    wrapper.plan(qo_indptr, kv_indptr, kv_indices, torch.ones(len(prefix_lens), dtype=torch.int32, device="cuda"),
                 HQ, HK, D, 1, custom_mask=mask, q_data_type=dtype, kv_data_type=dtype)


def _assert_dense_equal(out, q, pool_k, pool_v, mask: torch.Tensor, n: int, prefix_lens: list[int]) -> None:
    """out [bs * n, HQ, D] must be attention query by query over exactly the mask's keys."""
    _, kv_indptr, _ = _indptrs(n, prefix_lens)
    start = 0
    for b, p in enumerate(prefix_lens):
        rows = mask[start : start + n * (p + n)].view(n, p + n)
        start += n * (p + n)
        keys = pool_k[kv_indptr[b] : kv_indptr[b + 1], 0].float().repeat_interleave(HQ // HK, 1)
        vals = pool_v[kv_indptr[b] : kv_indptr[b + 1], 0].float().repeat_interleave(HQ // HK, 1)
        for i in range(n):
            scores = torch.einsum("hd,khd->hk", q[b * n + i].float(), keys[rows[i]]) / D**0.5
            ref = torch.einsum("hk,khd->hd", F.softmax(scores, -1), vals[rows[i]])
            torch.testing.assert_close(out[b * n + i].float(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("topk, n, prefix_lens", [
    (4, 16, [5, 0, 37]),
    (4, 32, [300, 1, 64]),   # the shipped servers' k4 n32 tree
    (8, 64, [17, 1000]),
    (2, 5, [0, 9, 4, 120]),  # a small controller budget
])
def test_flashinfer_tree_mask_matches_dense_attention(topk: int, n: int, prefix_lens: list[int]):
    # Absent in `launch/test_gpu.sh --bare` unless carried (launch/pack_flashinfer.sh).
    flashinfer = pytest.importorskip("flashinfer")
    gen = torch.Generator(device="cuda").manual_seed(n)
    _, mask = _tree_mask(gen, topk, n, prefix_lens)
    pool_k = torch.randn(sum(prefix_lens) + len(prefix_lens) * n, 1, HK, D, device="cuda",
                         dtype=torch.float16, generator=gen)
    pool_v = torch.randn_like(pool_k)
    q = torch.randn(len(prefix_lens) * n, HQ, D, device="cuda", dtype=torch.float16, generator=gen)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
        torch.empty(128 * 1024 * 1024, dtype=torch.uint8, device="cuda"), "NHD")
    _plan(wrapper, n, prefix_lens, mask, torch.float16)
    _assert_dense_equal(wrapper.run(q, (pool_k, pool_v)), q, pool_k, pool_v, mask, n, prefix_lens)


def test_flashinfer_tree_mask_in_cuda_graph_replay():
    """As SGLang's verify graphs use it: the wrapper's buffers are fixed, the graph is captured
    for one tree, and each step re-plans (new mask, prefix lengths) and replays; bf16 as served."""
    flashinfer = pytest.importorskip("flashinfer")
    gen = torch.Generator(device="cuda").manual_seed(7)
    topk, n, max_prefix = 4, 32, 600
    captured, replayed = [5, 200, 37], [600, 1, 64]
    bs, max_kv = len(captured), len(captured) * (max_prefix + n)
    dtype = torch.bfloat16
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
        torch.empty(128 * 1024 * 1024, dtype=torch.uint8, device="cuda"), "NHD", use_cuda_graph=True,
        qo_indptr_buf=torch.empty(bs + 1, dtype=torch.int32, device="cuda"),
        paged_kv_indptr_buf=torch.empty(bs + 1, dtype=torch.int32, device="cuda"),
        paged_kv_indices_buf=torch.empty(max_kv, dtype=torch.int32, device="cuda"),
        paged_kv_last_page_len_buf=torch.empty(bs, dtype=torch.int32, device="cuda"),
        custom_mask_buf=torch.empty(n * max_kv // 8 + 8, dtype=torch.uint8, device="cuda"),
        mask_indptr_buf=torch.empty(bs + 1, dtype=torch.int32, device="cuda"))
    pool_k = torch.randn(max_kv, 1, HK, D, device="cuda", dtype=dtype, generator=gen)
    pool_v = torch.randn_like(pool_k)
    q = torch.zeros(bs * n, HQ, D, device="cuda", dtype=dtype)

    _plan(wrapper, n, captured, _tree_mask(gen, topk, n, captured)[1], dtype)
    graph, out = _capture(lambda: wrapper.run(q, (pool_k, pool_v)))

    for prefix_lens in (replayed, captured):
        _, mask = _tree_mask(gen, topk, n, prefix_lens)
        q.copy_(torch.randn(q.shape, device="cuda", dtype=dtype, generator=gen))
        _plan(wrapper, n, prefix_lens, mask, dtype)
        graph.replay()
        _assert_dense_equal(out, q, pool_k, pool_v, mask, n, prefix_lens)


def _split_attention_class():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from gpu_mask_cost import SplitTreeAttention

    return SplitTreeAttention


def _split_inputs(pool_k, pool_v, n: int, prefix_lens: list[int]):
    """prefix_indptr, prefix_indices, and the nodes' own K and V ([bs * n, HK, D]) of the layout
    _indptrs gives (request b's prefix rows, then its n node rows)."""
    _, kv_indptr, _ = _indptrs(n, prefix_lens)
    starts = kv_indptr[:-1].long()
    prefix_indices = torch.cat([start + torch.arange(p, device="cuda") for start, p in zip(starts, prefix_lens)])
    node_rows = (starts[:, None] + torch.tensor(prefix_lens, device="cuda")[:, None]
                 + torch.arange(n, device="cuda")).reshape(-1)
    prefix_indptr = torch.tensor([0] + prefix_lens, device="cuda").cumsum(0).int()
    return prefix_indptr, prefix_indices.int(), pool_k[node_rows, 0], pool_v[node_rows, 0]


@pytest.mark.parametrize("topk, n, prefix_lens", [
    (4, 16, [5, 1, 37]),
    (4, 32, [300, 1, 64]),
    (8, 64, [17, 1000]),
    (2, 5, [1, 9, 4, 120]),
])
def test_split_tree_attention_matches_dense_attention(topk: int, n: int, prefix_lens: list[int]):
    flashinfer = pytest.importorskip("flashinfer")
    split = _split_attention_class()
    gen = torch.Generator(device="cuda").manual_seed(n + 1)
    tree, mask = _tree_mask(gen, topk, n, prefix_lens)
    pool_k = torch.randn(sum(prefix_lens) + len(prefix_lens) * n, 1, HK, D, device="cuda",
                         dtype=torch.float16, generator=gen)
    pool_v = torch.randn_like(pool_k)
    q = torch.randn(len(prefix_lens) * n, HQ, D, device="cuda", dtype=torch.float16, generator=gen)
    workspace = torch.empty(128 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    # fa2, as SGLang's paged prefill wrappers: "auto" would JIT-build fa3 for the unmasked prefix on Hopper.
    attention = split(flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend="fa2"),
                      flashinfer.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD", backend="fa2"))
    prefix_indptr, prefix_indices, k_new, v_new = _split_inputs(pool_k, pool_v, n, prefix_lens)
    attention.plan(prefix_indptr, prefix_indices, tree.ancestors, (HQ, HK, D), torch.float16)
    out = attention.run(q, (pool_k, pool_v), k_new, v_new)
    _assert_dense_equal(out, q, pool_k, pool_v, mask, n, prefix_lens)


def test_split_tree_attention_in_cuda_graph_replay():
    """As a verify graph would run it: both wrappers on fixed buffers, captured for one tree,
    re-planned for another (new ancestors, prefix lengths) and replayed; bf16 as served."""
    flashinfer = pytest.importorskip("flashinfer")
    split = _split_attention_class()
    gen = torch.Generator(device="cuda").manual_seed(8)
    topk, n, max_prefix = 4, 32, 600
    captured, replayed = [5, 200, 37], [600, 1, 64]
    bs, max_kv = len(captured), len(captured) * (max_prefix + n)
    dtype = torch.bfloat16

    def buffer(size: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
        return torch.empty(size, dtype=dtype, device="cuda")

    workspace = buffer(128 * 1024 * 1024, torch.uint8)
    attention = split(
        flashinfer.BatchPrefillWithPagedKVCacheWrapper(
            workspace, "NHD", use_cuda_graph=True, qo_indptr_buf=buffer(bs + 1),
            paged_kv_indptr_buf=buffer(bs + 1), paged_kv_indices_buf=buffer(bs * max_prefix),
            paged_kv_last_page_len_buf=buffer(bs), backend="fa2"),
        flashinfer.BatchPrefillWithRaggedKVCacheWrapper(
            workspace, "NHD", use_cuda_graph=True, qo_indptr_buf=buffer(bs + 1), kv_indptr_buf=buffer(bs + 1),
            custom_mask_buf=buffer(bs * n * n // 8 + 8, torch.uint8), mask_indptr_buf=buffer(bs + 1),
            backend="fa2"))
    pool_k = torch.randn(max_kv, 1, HK, D, device="cuda", dtype=dtype, generator=gen)
    pool_v = torch.randn_like(pool_k)
    q = torch.zeros(bs * n, HQ, D, device="cuda", dtype=dtype)
    k_new = torch.zeros(bs * n, HK, D, device="cuda", dtype=dtype)
    v_new = torch.zeros_like(k_new)

    def plan(prefix_lens: list[int]) -> torch.Tensor:
        tree, mask = _tree_mask(gen, topk, n, prefix_lens)
        prefix_indptr, prefix_indices, keys, values = _split_inputs(pool_k, pool_v, n, prefix_lens)
        k_new.copy_(keys)
        v_new.copy_(values)
        attention.plan(prefix_indptr, prefix_indices, tree.ancestors, (HQ, HK, D), dtype)
        return mask

    plan(captured)
    graph, out = _capture(lambda: attention.run(q, (pool_k, pool_v), k_new, v_new))

    for prefix_lens in (replayed, captured):
        mask = plan(prefix_lens)
        q.copy_(torch.randn(q.shape, device="cuda", dtype=dtype, generator=gen))
        graph.replay()
        _assert_dense_equal(out, q, pool_k, pool_v, mask, n, prefix_lens)
