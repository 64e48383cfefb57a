"""Linear layers on CPU: MKL's sgemm (F.linear) vs oneDNN with prepacked weights, by row count.

The rows of a linear layer are the tokens of a forward: 1 for a decode step at
batch 1, bs x n for a verify pass of n nodes. Weights are the inflated twin's
target (28 layers of qkv, o, gate_up, down at hidden 768, intermediate 2304,
~860 MB fp32, more than any cache), so each pass streams them from memory as a
real forward does. Rounds rotate the two kernels; the median and the range of
the milliseconds of one pass over all layers are reported, and each as a
multiple of the same kernel's one-row pass. Writes
bench/results/cpu-linear-DEVICE-DATE.md.

    python bench/cpu_linear.py                # 1 thread, rows 1..64, 5 rounds
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from sgl_dflash.sglang_patches import _prepacked_cpu_linear

ROOT = Path(__file__).resolve().parent.parent
HIDDEN, INTERMEDIATE, LAYERS = 768, 2304, 28
SHAPES = [(3 * HIDDEN, HIDDEN), (HIDDEN, HIDDEN), (2 * INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)]


def _mkl(method, layer: torch.nn.Module, x: torch.Tensor, bias=None) -> torch.Tensor:
    return F.linear(x, layer.weight, bias)


def kernels() -> dict[str, Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]]:
    return {
        "MKL sgemm (F.linear)": lambda layer, x: _mkl(None, layer, x),
        "oneDNN prepacked": lambda layer, x: _prepacked_cpu_linear(_mkl, None, layer, x),
    }


def one_pass_ms(run, layers: list[torch.nn.Module], rows: int) -> float:
    inputs = {d: torch.randn(rows, d) for _, d in SHAPES}
    start = time.perf_counter()
    for layer in layers:
        run(layer, inputs[layer.weight.shape[1]])
    return 1e3 * (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,2,4,8,16,32,64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [int(r) for r in args.rows.split(",")]
    layers = []
    for _ in range(LAYERS):
        for out_features, in_features in SHAPES:
            layer = torch.nn.Module()
            layer.weight = torch.nn.Parameter(torch.randn(out_features, in_features), requires_grad=False)
            layers.append(layer)
    runs = kernels()
    times: dict[tuple[str, int], list[float]] = {(k, r): [] for k in runs for r in rows}
    with torch.inference_mode():
        for name, run in runs.items():  # warm-up; packs the weights once
            one_pass_ms(run, layers, 1)
        for round_ in range(args.rounds):
            order = list(runs)[round_ % 2 :] + list(runs)[: round_ % 2]
            for r in rows:
                for name in order:
                    times[name, r].append(one_pass_ms(runs[name], layers, r))
            print(f"[cpu_linear] round {round_ + 1}/{args.rounds} done", flush=True)

    today = datetime.date.today().isoformat()
    lines = [
        f"# Linear layers on CPU by row count, {today}",
        "",
        f"device: cpu ({platform.processor() or platform.machine()}), {args.threads} thread(s), fp32, "
        f"torch {torch.__version__}",
        f"weights: the twin target's linear layers ({LAYERS} x qkv, o, gate_up, down; hidden {HIDDEN}, "
        f"intermediate {INTERMEDIATE}); {args.rounds} rounds rotating the kernels; median [min-max] ms "
        "of one pass over all layers, and the median as a multiple of the same kernel's 1-row pass",
        "",
        "| rows | " + " | ".join(runs) + " | oneDNN vs MKL |",
        "|---:|" + "---:|" * (len(runs) + 1),
    ]
    base = {name: statistics.median(times[name, rows[0]]) for name in runs}
    mkl, onednn = runs
    for r in rows:
        cells = []
        for name in runs:
            t = times[name, r]
            cells.append(f"{statistics.median(t):.1f} [{min(t):.1f}-{max(t):.1f}] ({statistics.median(t) / base[name]:.2f}x)")
        ratio = statistics.median(times[onednn, r]) / statistics.median(times[mkl, r])
        lines.append(f"| {r} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    out = args.out or ROOT / "bench" / "results" / f"cpu-linear-cpu-{today}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
