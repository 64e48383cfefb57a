"""Mean accept length tau and its histogram on held-out prompts, per block size.

Compares the DFlash drafter with two baselines on the same target: no drafter
(tau = 1) and an n-gram / prompt-lookup drafter. tau = tokens committed per
target verify pass (accepted drafts + 1). Uses the plain-torch reference
decoder (identical decisions to the SGL_DFLASH server, see tests).

    python bench/acceptance.py                      # the shipped tiny pair
    python bench/acceptance.py --target T --draft D --blocks 4,8,16 --out bench/results/x.md
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from sgl_dflash.training.corpus import heldout_prompts
from sgl_dflash.training.dflash_trainer import load_target
from sgl_dflash.training.drafter import DFlashDrafter
from sgl_dflash.training.reference_decoder import dflash_proposer, ngram_proposer, speculative_greedy

ASSETS = Path(__file__).resolve().parent.parent / "sgl_dflash" / "assets"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", type=Path, default=ASSETS / "tiny-target")
    ap.add_argument("--draft", type=Path, default=ASSETS / "tiny-draft")
    ap.add_argument("--blocks", default="4,8,16")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--out", type=Path, default=Path("bench/results") / f"acceptance-{datetime.date.today()}.md")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    target, tokenizer = load_target(args.target, "cpu")
    drafter = DFlashDrafter.from_pretrained(args.draft).eval()
    prompts = heldout_prompts(tokenizer, args.prompts, args.prompt_len)
    methods = {"no drafter": None, "n-gram (prompt lookup)": ngram_proposer(), "DFlash (ours)": dflash_proposer(target, drafter)}
    blocks = [int(b) for b in args.blocks.split(",")]
    rows: dict[tuple[str, int], list[int]] = {}
    for b in blocks:
        for name, propose in methods.items():
            if propose is None and b != blocks[0]:
                rows[name, b] = rows[name, blocks[0]]
                continue
            acc: list[int] = []
            for p in tqdm(prompts, desc=f"{name}, B={b}", leave=False):
                acc += speculative_greedy(target, propose, p, args.max_new_tokens, b, tokenizer.eos_token_id)[1]
            rows[name, b] = acc
            print(f"B={b:>2} {name:<24} tau={1 + sum(acc) / len(acc):.2f}", flush=True)

    lines = [
        f"# Acceptance on held-out prompts, {datetime.date.today()}",
        "",
        f"target `{args.target}`, draft `{args.draft}` (trained block size {drafter.block_size}); "
        f"{len(prompts)} held-out stdlib windows of {args.prompt_len} tokens, {args.max_new_tokens} new tokens, greedy.",
        "tau = tokens committed per verify pass; histogram = share of steps accepting k drafts.",
        "",
        "| block | method | tau | histogram k=0,1,2,... |",
        "|---:|---|---:|---|",
    ]
    for b in blocks:
        for name in methods:
            acc = rows[name, b]
            hist = torch.bincount(torch.tensor(acc), minlength=b).tolist() if methods[name] else [len(acc)]
            shares = " ".join(f"{h / len(acc):.2f}" for h in hist)
            lines.append(f"| {b} | {name} | {1 + sum(acc) / len(acc):.2f} | {shares} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    plot(rows, blocks, list(methods), args.out.with_suffix(".png"))
    print("\n".join(lines))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


def plot(rows, blocks, names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        taus = [1 + sum(rows[name, b]) / len(rows[name, b]) for b in blocks]
        left.bar([j + i * width for j in range(len(blocks))], taus, width, label=name)
    left.set_xticks([j + width for j in range(len(blocks))], [f"B={b}" for b in blocks])
    left.set_ylabel("mean accept length tau")
    left.legend()
    b = blocks[-1]
    for name in names[1:]:
        hist = torch.bincount(torch.tensor(rows[name, b]), minlength=b).float()
        right.plot(range(b), (hist / hist.sum()).tolist(), marker="o", label=name)
    right.set_xlabel(f"drafts accepted per step (B={b})")
    right.set_ylabel("share of steps")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
