"""What verifying a tree costs a GPU beyond a chain of the same length: FlashInfer's custom mask.

A chain verifies with causal attention; a tree (top-k > 1) hands SGLang our flat custom
mask, which FlashInfer packs into bits at each step's plan and reads in every layer.
Here, FlashInfer's paged prefill (as SGLang's verify uses it: fa2, page size 1, bf16)
in Llama-3-8B's attention shape (32 query / 8 KV heads, head dim 128) over batch x
(context + n) keys: per step, the plan (host wall time; the tree's includes packing the
mask) and one layer's attention (CUDA events), causal against a top-4 tree's mask from
our kernel, and against the same tree verified in two parts (``SplitTreeAttention``:
the prefix without a mask, the tree's own keys with its ancestor mask, merged). Scaled
to 32 layers and set against the step time t(batch, n) of the step-cost table for this
GPU where one is recorded. Median of rotating rounds [range]. The split's output is
checked against the masked one's in every cell (largest difference in the report).

    python bench/gpu_mask_cost.py     # needs CUDA and FlashInfer (launch/pack_flashinfer.sh for --bare)
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import flashinfer
import torch
from flashinfer.cascade import merge_state
from goals import median_range
from gpu_step_cost import publish, recorded_step_ms, result_path, rotated

from sgl_dflash.tree import make_tree
from sgl_dflash.tree_mask import verify_mask

HQ, HK, D, LAYERS, BLOCK, TOPK = 32, 8, 128, 32, 16, 4
CONTEXTS, BATCHES, NODES = [1024, 4096], [1, 8, 32, 64], [16, 32]
MODES = ["causal", "tree", "split"]


class SplitTreeAttention:
    """A tree's verify attention in two parts: every query against the whole prefix with no
    mask (a paged wrapper, as a chain's prefix), and against the tree's own N keys with its
    ancestor mask (a ragged wrapper over the new tokens' K/V), merged by log-sum-exp
    (FlashInfer's cascade merge, as SGLang's extend path merges its ragged and paged parts).
    The mask FlashInfer packs and reads shrinks from N x (prefix + N) to N x N per request.
    Both wrappers may be CUDA-graph ones (fixed buffers, re-planned before each replay)."""

    def __init__(self, paged, ragged) -> None:
        self.paged, self.ragged = paged, ragged

    def plan(self, prefix_indptr: torch.Tensor, prefix_indices: torch.Tensor, ancestors: torch.Tensor,
             heads: tuple[int, int, int], dtype: torch.dtype) -> None:
        """prefix_indptr [bs + 1], prefix_indices [sum prefix] (page size 1); ancestors [bs, N, N]
        bool (DraftTree.ancestors); heads (query heads, KV heads, head dim)."""
        bs, n, _ = ancestors.shape
        hq, hk, d = heads
        qo_indptr = torch.arange(0, bs * n + 1, n, dtype=torch.int32, device=ancestors.device)
        last_page = (prefix_indptr[1:] - prefix_indptr[:-1]).clamp(max=1).int()  # 0 for an empty prefix
        self.paged.plan(qo_indptr, prefix_indptr, prefix_indices, last_page, hq, hk, d, 1, causal=False,
                        q_data_type=dtype, kv_data_type=dtype)
        self.ragged.plan(qo_indptr, qo_indptr, hq, hk, d, custom_mask=ancestors.reshape(-1),
                         q_data_type=dtype, kv_data_type=dtype)

    def run(self, q: torch.Tensor, pool: tuple[torch.Tensor, torch.Tensor], k_new: torch.Tensor,
            v_new: torch.Tensor) -> torch.Tensor:
        """q [bs * N, Hq, D]; pool: the paged cache; k_new, v_new [bs * N, Hk, D]: the nodes' own K/V."""
        prefix_out, prefix_lse = self.paged.run(q, pool, return_lse=True)
        tree_out, tree_lse = self.ragged.run(q, k_new, v_new, return_lse=True)
        return merge_state(prefix_out, prefix_lse, tree_out, tree_lse)[0]


class Cell:
    """One (context, batch, nodes) shape: its plan inputs, the tree's mask and q. Each mode has one
    wrapper (the split two), re-planned for the cell before it runs (as SGLang plans each step).
    Request b's keys are pool rows b * (context + nodes) onward: its prefix, then its nodes."""

    def __init__(self, context: int, batch: int, nodes: int, pool: tuple[torch.Tensor, torch.Tensor],
                 wrappers: dict, gen: torch.Generator) -> None:
        self.pool, self.wrappers = pool, wrappers
        kv = context + nodes
        self.qo_indptr = torch.arange(0, batch * nodes + 1, nodes, dtype=torch.int32, device="cuda")
        self.kv_indptr = torch.arange(0, batch * kv + 1, kv, dtype=torch.int32, device="cuda")
        self.kv_indices = torch.arange(batch * kv, dtype=torch.int32, device="cuda")
        self.last_page = torch.ones(batch, dtype=torch.int32, device="cuda")
        probs, ids = torch.rand(batch, BLOCK - 1, TOPK, device="cuda", generator=gen).sort(-1, descending=True)
        prefix = torch.full((batch,), context, device="cuda")
        tree = make_tree(torch.zeros(batch, dtype=torch.long, device="cuda"), ids, probs, nodes, prefix)
        self.mask = verify_mask(tree, TOPK, prefix, batch * context)
        self.ancestors = tree.ancestors
        self.q = torch.randn(batch * nodes, HQ, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        starts = torch.arange(batch, device="cuda")[:, None] * kv
        self.prefix_indptr = torch.arange(0, batch * context + 1, context, dtype=torch.int32, device="cuda")
        self.prefix_indices = (starts + torch.arange(context, device="cuda")).reshape(-1).int()
        node_rows = (starts + context + torch.arange(nodes, device="cuda")).reshape(-1)
        self.k_new, self.v_new = (part[node_rows, 0] for part in pool)  # [batch * nodes, HK, D]

    def plan(self, mode: str) -> None:
        if mode == "split":
            self.wrappers[mode].plan(self.prefix_indptr, self.prefix_indices, self.ancestors, (HQ, HK, D),
                                     torch.bfloat16)
            return
        self.wrappers[mode].plan(
            self.qo_indptr, self.kv_indptr, self.kv_indices, self.last_page, HQ, HK, D, 1,
            causal=mode == "causal", custom_mask=self.mask if mode == "tree" else None,
            q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)

    def run(self, mode: str) -> torch.Tensor:
        if mode == "split":
            return self.wrappers[mode].run(self.q, self.pool, self.k_new, self.v_new)
        return self.wrappers[mode].run(self.q, self.pool)

    def split_error(self) -> float:
        """The largest abs(split - tree) over the cell's outputs."""
        self.plan("tree")
        masked = self.run("tree").float()
        self.plan("split")
        return float((self.run("split").float() - masked).abs().max())

    def plan_ms(self, mode: str, reps: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            self.plan(mode)
        torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3 / reps

    def layer_ms(self, mode: str, reps: int) -> float:
        self.plan(mode)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(reps):
            self.run(mode)
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    device = torch.cuda.get_device_name()
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = max(BATCHES) * (max(CONTEXTS) + max(NODES))
    pool_k = torch.randn(rows, 1, HK, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    pool = (pool_k, torch.randn_like(pool_k))
    workspace = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    wrappers = {mode: flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend="fa2")
                for mode in ("causal", "tree")}
    wrappers["split"] = SplitTreeAttention(
        flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend="fa2"),
        flashinfer.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD", backend="fa2"))
    cells = {(c, b, n): Cell(c, b, n, pool, wrappers, gen) for c in CONTEXTS for b in BATCHES for n in NODES}
    errors = {key: cell.split_error() for key, cell in cells.items()}  # also JIT-compiles FlashInfer's modules
    for cell in cells.values():  # warm every shape
        for mode in MODES:
            cell.layer_ms(mode, 2)
    samples: dict[tuple, list[float]] = {}
    order = [(key, mode, what) for key in cells for mode in MODES for what in ("plan", "layer")]
    for r in range(args.rounds):
        for key, mode, what in rotated(order, r, args.rounds):
            cell = cells[key]
            ms = cell.plan_ms(mode, args.reps) if what == "plan" else cell.layer_ms(mode, args.reps)
            samples.setdefault((*key, mode, what), []).append(ms)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    def med(*key) -> float:
        return statistics.median(samples[key])

    def fmt(*key) -> str:
        return "{:.3f} [{:.3f}-{:.3f}]".format(*median_range(samples[key]))

    lines = [f"# Tree mask vs causal verify attention on {device}, {datetime.date.today()}", "",
             f"FlashInfer {flashinfer.__version__} paged prefill, fa2, page size 1, bf16, {HQ} query / {HK} KV "
             f"heads, head dim {D}; tree: top-{TOPK} best-first from random drafter probabilities, its mask "
             f"from `verify_mask`; split: `SplitTreeAttention` (paged prefix without a mask + ragged tree with "
             f"its ancestor mask, merged). Plan: host wall ms per step; layer: one layer's attention, ms (CUDA "
             f"events). Extra per step = mode - causal, plan + {LAYERS} layers. Max abs(split - tree): the largest "
             f"difference of the two outputs in the cell. Median of {args.rounds} rotating rounds x {args.reps} "
             f"[range]; torch {torch.__version__}.", ""]

    def extra(key: tuple, mode: str) -> float:
        return (med(*key, mode, "plan") - med(*key, "causal", "plan")
                + LAYERS * (med(*key, mode, "layer") - med(*key, "causal", "layer")))

    for context in CONTEXTS:
        steps, _ = recorded_step_ms(context)
        header = ("| batch | n | plan, causal | plan, tree | plan, split | layer, causal | layer, tree | layer, split "
                  "| layer tree / causal | layer split / causal | extra per step, tree (ms) | extra, split (ms) |"
                  + (" extra / step t(b, n), tree | split |" if steps else "") + " max abs(split - tree) |")
        lines += [f"## Context {context}", "", header, "|" + "---:|" * (header.count("|") - 1)]
        for b in BATCHES:
            for n in NODES:
                key = (context, b, n)
                causal_layer = med(*key, "causal", "layer")
                row = [str(b), str(n)] + [fmt(*key, mode, "plan") for mode in MODES]
                row += [fmt(*key, mode, "layer") for mode in MODES]
                row += [f"{med(*key, mode, 'layer') / causal_layer:.2f}" for mode in ("tree", "split")]
                row += [f"{extra(key, mode):.3f}" for mode in ("tree", "split")]
                if steps:
                    row += [f"{extra(key, mode) / steps[(b, n)]:.1%}" if (b, n) in steps else ""
                            for mode in ("tree", "split")]
                row.append(f"{errors[key]:.1e}")
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    publish(lines, result_path("mask-cost"))


if __name__ == "__main__":
    main()
