"""What a verify step costs on a GPU, for a deployment-shaped target: t(batch, nodes).

A gpt-fast-style decoder with random bf16 weights in a real model's shape
(default Llama-3-8B: hidden 4096, 32 layers, 32 query / 8 KV heads, MLP 14336,
vocab 128256) runs one forward of `batch` requests x `nodes` query tokens over a
KV cache of `context` tokens each, captured in a CUDA graph as SGLang's graph
runners do. Attention is FlashAttention-2 (PyTorch's flash SDPA, split-KV for
decode) with the query heads folded per KV head, so K and V are read once per KV
head as FlashInfer's GQA kernels do. It attends to all context + nodes keys
without a mask, i.e. the cost of a chain's (causal) verify; a tree's custom mask
costs FlashInfer more than that (bench/gpu_mask_cost.py). The drafter is the same stack cut to `--draft-layers` layers
running `--block` query positions (DFlash's block) plus the shared LM head.

Reported per batch: milliseconds of one step for each node budget (median of
rounds, rotating over cells), the ratio to the one-token step (a plain decode
step), and the break-even: committed tokens per step a drafted step needs to
match plain decoding, (draft + verify(n)) / verify(1). This is the table the
controller's cost model measures for itself at startup; on CPU the twin pair
imitates it.

    python bench/gpu_step_cost.py                  # context 1024; --context 4096 for long prompts
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Shape:
    hidden: int = 4096
    layers: int = 32
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    intermediate: int = 14336
    vocab: int = 128256


class Decoder:
    """Pre-norm decoder layers with a static KV cache; rotary is left out (elementwise, cheap)."""

    def __init__(self, shape: Shape, layers: int, max_batch: int, max_len: int) -> None:
        s, dev, dt = shape, "cuda", torch.bfloat16
        self.shape = s

        def w(*size: int) -> torch.Tensor:
            return torch.randn(*size, device=dev, dtype=dt) * 0.02

        qkv = (s.heads + 2 * s.kv_heads) * s.head_dim
        self.layers = [
            {"qkv": w(qkv, s.hidden), "o": w(s.hidden, s.heads * s.head_dim),
             "gate_up": w(2 * s.intermediate, s.hidden), "down": w(s.hidden, s.intermediate)}
            for _ in range(layers)
        ]
        self.embed = w(s.vocab, s.hidden)
        self.lm_head = w(s.vocab, s.hidden)
        # [layers, 2 (k, v), max_batch, kv_heads, max_len, head_dim]
        self.cache = torch.zeros(layers, 2, max_batch, s.kv_heads, max_len, s.head_dim, device=dev, dtype=dt)

    def forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """tokens [b, n] at positions start..start+n-1, each attending to all start + n keys; -> logits [b, n, vocab]."""
        s = self.shape
        b, n = tokens.shape
        group = s.heads // s.kv_heads
        x = F.embedding(tokens, self.embed)
        for i, layer in enumerate(self.layers):
            h = F.rms_norm(x, (s.hidden,))
            q, k, v = (h @ layer["qkv"].T).split(
                [s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim], dim=-1)
            # The query heads sharing a KV head become extra query rows of that head, so K and V are
            # read once per KV head, as GQA kernels (FlashInfer) do: [b, kv_heads, n * group, head_dim].
            q = q.view(b, n, s.kv_heads, group, s.head_dim).permute(0, 2, 1, 3, 4).reshape(b, s.kv_heads, -1, s.head_dim)
            cache_k, cache_v = self.cache[i, 0, :b], self.cache[i, 1, :b]
            cache_k[:, :, start : start + n] = k.view(b, n, s.kv_heads, s.head_dim).transpose(1, 2)
            cache_v[:, :, start : start + n] = v.view(b, n, s.kv_heads, s.head_dim).transpose(1, 2)
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                attn = F.scaled_dot_product_attention(q, cache_k[:, :, : start + n], cache_v[:, :, : start + n])
            attn = attn.view(b, s.kv_heads, n, group, s.head_dim).permute(0, 2, 1, 3, 4).reshape(b, n, -1)
            x = x + attn @ layer["o"].T
            gate, up = (F.rms_norm(x, (s.hidden,)) @ layer["gate_up"].T).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ layer["down"].T
        return F.rms_norm(x, (s.hidden,)) @ self.lm_head.T


def graph_ms(model: Decoder, batch: int, nodes: int, context: int, reps: int) -> float:
    """Capture one (batch, nodes) step in a CUDA graph; median ms of `reps` replays."""
    tokens = torch.randint(0, model.shape.vocab, (batch, nodes), device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            model.forward(tokens, context)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model.forward(tokens, context)
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(reps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    del graph
    return statistics.median(times)


def device_slug() -> str:
    """This GPU's name as result files spell it (e.g. "h200")."""
    return torch.cuda.get_device_name().lower().replace("nvidia", "").strip().replace(" ", "-")


def result_path(name: str, suffix: str = "") -> Path:
    """bench/results/gpu-NAME-DEVICE-DATE[SUFFIX].md, where the GPU benches keep their reports."""
    return ROOT / "bench" / "results" / f"gpu-{name}-{device_slug()}-{datetime.date.today()}{suffix}.md"


def publish(lines: list[str], out: Path) -> None:
    """Print the report and write it to out."""
    report = "\n".join(lines) + "\n"
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"wrote {out}")


def rotated(cells: list, r: int, rounds: int) -> list:
    """Round r's order: the cells rotated, so a drift in the machine's speed hits every cell alike."""
    shift = r * len(cells) // rounds
    return cells[shift:] + cells[:shift]


def recorded_step_ms(context: int) -> tuple[dict[tuple[int, int], float], str]:
    """Median t(batch, n) of verify steps from the newest table recorded for this GPU at this
    context, and that file's name; ({}, "") where none is recorded."""
    found = sorted((ROOT / "bench" / "results").glob(f"gpu-step-cost-{device_slug()}-*-ctx{context}.json"))
    if not found:
        return {}, ""
    samples = json.loads(found[-1].read_text())["samples_ms"]
    cells = (key.split("/") for key in samples if key.startswith("verify/"))
    return {(int(b), int(n)): statistics.median(samples[f"verify/{b}/{n}"]) for _, b, n in cells}, found[-1].name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--nodes", default="1,2,4,8,16,32")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--draft-layers", type=int, default=5)
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: bench/results/gpu-step-cost-DEVICE-DATE-ctxCONTEXT.md (and .json)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    nodes = [int(n) for n in args.nodes.split(",")]
    shape = Shape()
    max_len = args.context + max(max(nodes), args.block)
    target = Decoder(shape, shape.layers, max(batches), max_len)
    drafter = Decoder(shape, args.draft_layers, max(batches), max_len)
    cells = [("verify", b, n) for b in batches for n in nodes] + [("draft", b, args.block) for b in batches]
    samples: dict[tuple[str, int, int], list[float]] = {c: [] for c in cells}
    for r in range(args.rounds):
        for kind, b, n in rotated(cells, r, args.rounds):
            samples[(kind, b, n)].append(graph_ms(target if kind == "verify" else drafter, b, n, args.context, args.reps))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    med = {c: statistics.median(v) for c, v in samples.items()}

    device = torch.cuda.get_device_name()
    out = args.out or result_path("step-cost", f"-ctx{args.context}")
    lines = [
        f"# Step cost on {device}, {datetime.date.today()}",
        "",
        (f"Target: Llama-3-8B-shaped decoder ({shape.layers} layers, hidden {shape.hidden}, random bf16 weights), "
        f"drafter: {args.draft_layers} layers of the same width, {args.block} positions; context {args.context} "
        f"tokens per request; CUDA graphs; flash SDPA (no mask); torch {torch.__version__}. "
        f"Median of {args.rounds} rotating rounds x {args.reps} replays."),
        "",
        "## Milliseconds per step (verify of n tokens per request; draft pass)",
        "",
        "| batch | " + " | ".join(f"n={n}" for n in nodes) + " | draft |",
        "|---:|" + "---:|" * (len(nodes) + 1),
    ]
    for b in batches:
        lines.append(f"| {b} | " + " | ".join(f"{med[('verify', b, n)]:.2f}" for n in nodes)
                     + f" | {med[('draft', b, args.block)]:.2f} |")
    lines += ["", "## Verify cost as a multiple of a plain decode step, t(b, n) / t(b, 1)", "",
              "| batch | " + " | ".join(f"n={n}" for n in nodes) + " |", "|---:|" + "---:|" * len(nodes)]
    for b in batches:
        lines.append(f"| {b} | " + " | ".join(f"{med[('verify', b, n)] / med[('verify', b, 1)]:.2f}" for n in nodes) + " |")
    lines += ["", "## Break-even committed tokens per drafted step, (draft + t(b, n)) / t(b, 1)", "",
              "| batch | " + " | ".join(f"n={n}" for n in nodes if n > 1) + " |", "|---:|" + "---:|" * (len(nodes) - 1)]
    for b in batches:
        base = med[("verify", b, 1)]
        lines.append(f"| {b} | " + " | ".join(
            f"{(med[('draft', b, args.block)] + med[('verify', b, n)]) / base:.2f}" for n in nodes if n > 1) + " |")
    publish(lines, out)
    out.with_suffix(".json").write_text(json.dumps(
        {"device": device, "context": args.context, "samples_ms": {f"{k}/{b}/{n}": v for (k, b, n), v in samples.items()}},
        indent=1))


if __name__ == "__main__":
    main()
