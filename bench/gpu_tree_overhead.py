"""What our tree stages add to a step on a GPU: make_tree, the verify mask and the accept walk.

They run eagerly between the captured draft and verify graphs (as in the worker), so
every kernel launch costs host time. Timed per step as wall time with a synchronize
at the end (what the step waits for), median of rotating rounds, for the chain
(top-k 1) and two trees, and set against a plain decode step t(batch, 1) of the
step-cost table for this GPU (bench/gpu_step_cost.py) where one is recorded. Side
by side in the same run: the tree tables and the mask by their Triton kernels (what
runs on a GPU) and by their plain-torch references (what ran on a GPU before those
kernels existed, and what runs on CPU).

    python bench/gpu_tree_overhead.py          # needs CUDA; run by launch/test_gpu.sh --bare
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from typing import Callable

import torch
from goals import median_range
from gpu_step_cost import publish, recorded_step_ms, result_path, rotated

from sgl_dflash.kernels.custom_mask import custom_mask_torch, custom_mask_triton
from sgl_dflash.kernels.tree_accept import tree_accept_triton
from sgl_dflash.kernels.tree_build import build_tree
from sgl_dflash.kernels.tree_tables import tree_tables_torch, tree_tables_triton

BLOCK, VOCAB, CONTEXT = 16, 128256, 1024
SHAPES = [(1, 16), (4, 32), (8, 64)]  # (top-k, nodes): the chain, the shipped tree, a large tree
BATCHES = [1, 8, 32, 64]
STAGES = ["tree", "mask", "accept", "all"]
IMPLS = {"kernels": (tree_tables_triton, custom_mask_triton), "torch": (tree_tables_torch, custom_mask_torch)}


def stage_fns(topk: int, nodes: int, batch: int, impl: str) -> dict[str, Callable[[], object]]:
    tables, mask = IMPLS[impl]
    gen = torch.Generator(device="cuda").manual_seed(batch * nodes)
    probs = torch.rand(batch, BLOCK - 1, topk, device="cuda", generator=gen).sort(-1, descending=True).values
    ids = torch.randint(0, VOCAB, probs.shape, device="cuda", generator=gen)
    root = torch.randint(0, VOCAB, (batch,), device="cuda", generator=gen)
    prefix = torch.full((batch,), CONTEXT, device="cuda")
    depth = min(BLOCK - 1, nodes - 1)
    mask_size = nodes * batch * (CONTEXT + nodes)

    def tree_stage():  # make_tree: the build kernel, then the tables
        tokens, parents, depths, _ = build_tree(root, ids, probs, nodes)
        return tokens, parents, tables(tokens, parents, depths, ids[:, :, 0], prefix, depth)

    tokens, parents, (_, ancestors, _, _) = tree_stage()
    choices = tokens.roll(-1, dims=1)  # the target agrees along each node's first child

    def mask_stage():  # verify_mask: none for a chain (causal attention)
        return None if topk == 1 else mask(ancestors, prefix, mask_size)

    def accept_stage():
        return tree_accept_triton(tokens, parents, choices, depth)

    def all_stages():
        t, p, (_, anc, _, _) = tree_stage()
        if topk > 1:
            mask(anc, prefix, mask_size)
        return tree_accept_triton(t, p, choices, depth)

    return dict(zip(STAGES, [tree_stage, mask_stage, accept_stage, all_stages]))


def wall_ms(fn: Callable[[], object], reps: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    device = torch.cuda.get_device_name()
    cells = {(k, n, b, impl): stage_fns(k, n, b, impl) for k, n in SHAPES for b in BATCHES for impl in IMPLS}
    for fns in cells.values():  # compile the Triton kernels and warm the allocator
        for fn in fns.values():
            wall_ms(fn, 3)
    samples: dict[tuple, list[float]] = {}
    order = [(cell, stage) for cell in cells for stage in STAGES]
    for r in range(args.rounds):
        for cell, stage in rotated(order, r, args.rounds):
            samples.setdefault((*cell, stage), []).append(wall_ms(cells[cell][stage], args.reps))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    steps, source = recorded_step_ms(CONTEXT)
    plain = {b: steps[(b, 1)] for b in BATCHES if (b, 1) in steps}  # a plain decode step, t(batch, 1)

    def ms(*key) -> str:
        return "{:.3f} [{:.3f}-{:.3f}]".format(*median_range(samples[key]))

    lines = [f"# Tree stages per step on {device}, {datetime.date.today()}", "",
             f"Eager, as the worker runs them between its graphs; milliseconds of wall time per step with a "
             f"synchronize at the end; block {BLOCK}, context {CONTEXT}; median of {args.rounds} rotating rounds "
             f"x {args.reps} steps [range]; torch {torch.__version__}. `kernels`: the tree tables and the mask by "
             "their Triton kernels (the GPU path); `torch`: by their plain-torch references (the GPU path before "
             "those kernels; the CPU path). Tree build and accept are Triton kernels in both.", ""]
    header = ("| top-k / nodes | batch | tree, kernels | tree, torch | mask, kernels | mask, torch | accept "
              "| all, kernels | all, torch |" + (" all / plain step, kernels | all / plain step, torch |" if plain else ""))
    lines += [header, "|" + "---:|" * (header.count("|") - 1)]
    for k, n in SHAPES:
        for b in BATCHES:
            row = [f"{k} / {n}", str(b), ms(k, n, b, "kernels", "tree"), ms(k, n, b, "torch", "tree"),
                   ms(k, n, b, "kernels", "mask"), ms(k, n, b, "torch", "mask"), ms(k, n, b, "kernels", "accept"),
                   ms(k, n, b, "kernels", "all"), ms(k, n, b, "torch", "all")]
            if plain:
                row += [f"{statistics.median(samples[(k, n, b, impl, 'all')]) / plain[b]:.1%}" if b in plain else ""
                        for impl in IMPLS]
            lines.append("| " + " | ".join(row) + " |")
    if plain:
        lines += ["", f"Plain decode step t(batch, 1) from `{source}`: "
                  + ", ".join(f"batch {b} {t:.2f} ms" for b, t in plain.items()) + "."]
    publish(lines, result_path("tree-overhead"))


if __name__ == "__main__":
    main()
