"""What verifying a tree costs a GPU beyond a chain of the same length: FlashInfer's custom mask.

A chain verifies with causal attention; a tree (top-k > 1) hands SGLang our flat custom
mask, which FlashInfer packs into bits at each step's plan and reads in every layer.
Here, FlashInfer's paged prefill (as SGLang's verify uses it: fa2, page size 1, bf16)
in Llama-3-8B's attention shape (32 query / 8 KV heads, head dim 128) over batch x
(context + n) keys: per step, the plan (host wall time; the tree's includes packing the
mask) and one layer's attention (CUDA events), causal against a top-4 tree's mask from
our kernel. Scaled to 32 layers and set against the step time t(batch, n) of the
step-cost table for this GPU where one is recorded. Median of rotating rounds [range].

    python bench/gpu_mask_cost.py     # needs CUDA and FlashInfer (launch/pack_flashinfer.sh for --bare)
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import flashinfer
import torch
from goals import median_range
from gpu_step_cost import publish, recorded_step_ms, result_path, rotated

from sgl_dflash.tree import make_tree
from sgl_dflash.tree_mask import verify_mask

HQ, HK, D, LAYERS, BLOCK, TOPK = 32, 8, 128, 32, 16, 4
CONTEXTS, BATCHES, NODES = [1024, 4096], [1, 8, 32, 64], [16, 32]
MODES = ["causal", "tree"]


class Cell:
    """One (context, batch, nodes) shape: its plan inputs, the tree's mask and q. Each mode has one
    wrapper, re-planned for the cell before it runs (as SGLang plans each step)."""

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
        self.q = torch.randn(batch * nodes, HQ, D, device="cuda", dtype=torch.bfloat16, generator=gen)

    def plan(self, mode: str) -> None:
        self.wrappers[mode].plan(
            self.qo_indptr, self.kv_indptr, self.kv_indices, self.last_page, HQ, HK, D, 1,
            causal=mode == "causal", custom_mask=self.mask if mode == "tree" else None,
            q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)

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
            self.wrappers[mode].run(self.q, self.pool)
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
    wrappers = {mode: flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend="fa2") for mode in MODES}
    cells = {(c, b, n): Cell(c, b, n, pool, wrappers, gen) for c in CONTEXTS for b in BATCHES for n in NODES}
    for cell in cells.values():  # JIT-compile FlashInfer's module, warm every shape
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
             f"from `verify_mask`. Plan: host wall ms per step; layer: one layer's attention, ms (CUDA events). "
             f"Extra per step = tree - causal, plan + {LAYERS} layers. Median of {args.rounds} rotating rounds x "
             f"{args.reps} [range]; torch {torch.__version__}.", ""]
    for context in CONTEXTS:
        steps, _ = recorded_step_ms(context)
        header = ("| batch | n | plan, causal | plan, tree | layer, causal | layer, tree | layer tree / causal "
                  "| extra per step (ms) |" + (" extra / step t(b, n) |" if steps else ""))
        lines += [f"## Context {context}", "", header, "|" + "---:|" * (header.count("|") - 1)]
        for b in BATCHES:
            for n in NODES:
                key = (context, b, n)
                extra = (med(*key, "tree", "plan") - med(*key, "causal", "plan")
                         + LAYERS * (med(*key, "tree", "layer") - med(*key, "causal", "layer")))
                row = [str(b), str(n), fmt(*key, "causal", "plan"), fmt(*key, "tree", "plan"),
                       fmt(*key, "causal", "layer"), fmt(*key, "tree", "layer"),
                       f"{med(*key, 'tree', 'layer') / med(*key, 'causal', 'layer'):.2f}", f"{extra:.3f}"]
                if steps:
                    row.append(f"{extra / steps[(b, n)]:.1%}" if (b, n) in steps else "")
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    publish(lines, result_path("mask-cost"))


if __name__ == "__main__":
    main()
