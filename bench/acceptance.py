"""Mean accept length tau on held-out prompts: per block size, and per tree shape.

Part ``blocks``: the DFlash drafter's chain against two baselines on the same
target, no drafter (tau = 1) and an n-gram / prompt-lookup drafter, per block
size. Part ``trees``: the drafter's trees, tau against the node budget N for
top-k 1 (the chain, N <= B), 2, 4 and 8. Both greedy and sampled. tau =
tokens committed per target verify pass (accepted drafts + 1). Uses the
plain-torch reference decoder (the same trees and decisions as the SGL_DFLASH
server when greedy, see tests; the same walk when sampling).

    python bench/acceptance.py                      # the shipped tiny pair, both parts
    python bench/acceptance.py --part trees --topks 1,4 --budgets 8,32
    python bench/acceptance.py --target T --draft D --blocks 4,8,16 --out bench/results/x.md
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from sgl_dflash.kernels.tree_build import max_tree_nodes
from sgl_dflash.training.corpus import heldout_prompts
from sgl_dflash.training.dflash_trainer import load_target
from sgl_dflash.training.drafter import DFlashDrafter
from sgl_dflash.training.reference_decoder import dflash_proposer, ngram_proposer, speculative_decode

ASSETS = Path(__file__).resolve().parent.parent / "sgl_dflash" / "assets"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", type=Path, default=ASSETS / "tiny-target")
    ap.add_argument("--draft", type=Path, default=ASSETS / "tiny-draft")
    ap.add_argument("--blocks", default="4,8,16")
    ap.add_argument("--temperatures", default="0,0.7", help="0 = greedy; > 0 = rejection sampling")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--part", choices=["blocks", "trees", "all"], default="all")
    ap.add_argument("--topks", default="1,2,4,8", help="tree part: top-k values (1 = the chain)")
    ap.add_argument("--budgets", default="2,4,8,16,32,64", help="tree part: node budgets N")
    ap.add_argument("--out", type=Path, default=Path("bench/results") / f"acceptance-{datetime.date.today()}.md")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    target, tokenizer = load_target(args.target, "cpu")
    drafter = DFlashDrafter.from_pretrained(args.draft).eval()
    prompts = heldout_prompts(tokenizer, args.prompts, args.prompt_len)
    temps = [float(t) for t in args.temperatures.split(",")]
    if args.part in ("trees", "all"):
        tree_sweep(args, target, tokenizer, drafter, prompts, temps)
    if args.part in ("blocks", "all"):
        block_sweep(args, target, tokenizer, drafter, prompts, temps)


def tree_sweep(args, target, tokenizer, drafter, prompts, temps) -> None:
    """tau against the node budget N, per top-k, at the drafter's own block size."""
    block = drafter.block_size
    topks = [int(k) for k in args.topks.split(",")]
    budgets = [int(n) for n in args.budgets.split(",")]
    taus: dict[tuple[float, int, int], float] = {}
    for temp in temps:
        for k in topks:
            propose = dflash_proposer(target, drafter, k)
            for n in budgets:
                if max_tree_nodes(k, block - 1, n) < n:
                    continue  # a chain holds at most B nodes
                acc: list[int] = []
                gen = torch.Generator().manual_seed(0)
                for p in tqdm(prompts, desc=f"T={temp} K={k} N={n}", leave=False):
                    acc += speculative_decode(target, propose, p, args.max_new_tokens, block,
                                              tokenizer.eos_token_id, temp, gen, num_nodes=n)[1]
                taus[temp, k, n] = 1 + sum(acc) / len(acc)
                print(f"T={temp} K={k} N={n:>2} tau={taus[temp, k, n]:.2f}", flush=True)
    chain = {temp: taus[temp, 1, block] for temp in temps if (temp, 1, block) in taus}
    lines = [
        f"# Accept length of draft trees on held-out prompts, {datetime.date.today()}",
        "",
        f"target `{args.target}`, draft `{args.draft}` (block {block}); {len(prompts)} held-out stdlib windows "
        f"of {args.prompt_len} tokens, {args.max_new_tokens} new tokens; trees: best-first over each block "
        "position's top-K, N nodes with the root; temperature 0 = greedy, > 0 = sampling at every node.",
        "tau = tokens committed per verify pass; in brackets, tau over the chain of the whole block (K=1, N=B).",
        "",
        "| temperature | N | " + " | ".join(f"K={k}" for k in topks) + " |",
        "|---:|---:|" + "---:|" * len(topks),
    ]
    for temp in temps:
        for n in budgets:
            cells = []
            for k in topks:
                tau = taus.get((temp, k, n))
                ratio = f" ({tau / chain[temp]:.2f}x)" if tau and temp in chain else ""
                cells.append(f"{tau:.2f}{ratio}" if tau else "-")
            lines.append(f"| {temp:g} | {n} | " + " | ".join(cells) + " |")
    out = args.out.with_name(args.out.stem + "-trees.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    plot_trees(taus, temps, topks, budgets, out.with_suffix(".png"))
    print("\n".join(lines))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


def plot_trees(taus, temps, topks, budgets, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(temps), figsize=(5.5 * len(temps), 4), squeeze=False)
    for ax, temp in zip(axes[0], temps):
        for k in topks:
            ns = [n for n in budgets if (temp, k, n) in taus]
            ax.plot(ns, [taus[temp, k, n] for n in ns], marker="o", label="chain (K=1)" if k == 1 else f"tree K={k}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("node budget N (verified tokens per request)")
        ax.set_ylabel("mean accept length tau")
        ax.set_title("greedy" if temp == 0 else f"temperature {temp:g}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def block_sweep(args, target, tokenizer, drafter, prompts, temps) -> None:
    natural = heldout_prompts(tokenizer, args.prompts, args.prompt_len + args.max_new_tokens, seed=1)
    methods = {"no drafter": None, "n-gram (prompt lookup)": ngram_proposer(), "DFlash (ours)": dflash_proposer(target, drafter)}
    blocks = [int(b) for b in args.blocks.split(",")]
    rows: dict[tuple[float, str, int], list[int]] = {}
    outputs: dict[float, list[list[int]]] = {}
    for temp in temps:
        for b in blocks:
            for name, propose in methods.items():
                if propose is None and b != blocks[0]:
                    rows[temp, name, b] = rows[temp, name, blocks[0]]
                    continue
                acc: list[int] = []
                gen = torch.Generator().manual_seed(0)
                for p in tqdm(prompts, desc=f"T={temp} {name}, B={b}", leave=False):
                    out, steps = speculative_decode(target, propose, p, args.max_new_tokens, b,
                                                    tokenizer.eos_token_id, temp, gen)
                    acc += steps
                    if propose is None:
                        outputs.setdefault(temp, []).append(p + out)
                rows[temp, name, b] = acc
                print(f"T={temp} B={b:>2} {name:<24} tau={1 + sum(acc) / len(acc):.2f}", flush=True)

    repetition = "; ".join(f"{lookup_hit_rate(outputs[t], args.prompt_len):.0%} at temperature {t:g}" for t in temps)
    lines = [
        f"# Acceptance on held-out prompts, {datetime.date.today()}",
        "",
        f"target `{args.target}`, draft `{args.draft}` (trained block size {drafter.block_size}); "
        f"{len(prompts)} held-out stdlib windows of {args.prompt_len} tokens, {args.max_new_tokens} new tokens; "
        "temperature 0 = greedy, > 0 = sampling (the target samples at each node, as the server).",
        "tau = tokens committed per verify pass; histogram = share of steps accepting k drafts.",
        f"Repetition (share of the target's tokens that the n-gram drafter's first draft predicts from the text "
        f"before them): {repetition}; {lookup_hit_rate(natural, args.prompt_len):.0%} for held-out human-written text.",
        "",
        "| temperature | block | method | tau | histogram k=0,1,2,... |",
        "|---:|---:|---|---:|---|",
    ]
    for temp in temps:
        for b in blocks:
            for name in methods:
                acc = rows[temp, name, b]
                hist = torch.bincount(torch.tensor(acc), minlength=b).tolist() if methods[name] else [len(acc)]
                shares = " ".join(f"{h / len(acc):.2f}" for h in hist)
                lines.append(f"| {temp:g} | {b} | {name} | {1 + sum(acc) / len(acc):.2f} | {shares} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    plot(rows, temps, blocks, list(methods), args.out.with_suffix(".png"))
    print("\n".join(lines))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


def lookup_hit_rate(seqs: list[list[int]], start: int) -> float:
    """Share of tokens at index >= start that the n-gram drafter's first draft,
    made from the text before them, gets right: how much of the text is a copy."""
    propose = ngram_proposer()
    hits = [int(propose(seq[: i - 1], seq[i - 1], 2)[0][0, 0]) == seq[i] for seq in seqs for i in range(start, len(seq))]
    return sum(hits) / max(len(hits), 1)


def plot(rows, temps, blocks, names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(temps) + 1, figsize=(5.5 * (len(temps) + 1), 4))
    width = 0.8 / len(names)
    for ax, temp in zip(axes, temps):
        for i, name in enumerate(names):
            taus = [1 + sum(rows[temp, name, b]) / len(rows[temp, name, b]) for b in blocks]
            ax.bar([j + i * width for j in range(len(blocks))], taus, width, label=name)
        ax.set_xticks([j + width for j in range(len(blocks))], [f"B={b}" for b in blocks])
        ax.set_ylabel("mean accept length tau")
        ax.set_title("greedy" if temp == 0 else f"temperature {temp:g}")
        ax.legend()
    b, right = blocks[-1], axes[-1]
    for temp in temps:
        for name in names[1:]:
            hist = torch.bincount(torch.tensor(rows[temp, name, b]), minlength=b).float()
            right.plot(range(b), (hist / hist.sum()).tolist(), marker="o", label=f"{name}, T={temp:g}")
    right.set_xlabel(f"drafts accepted per step (B={b})")
    right.set_ylabel("share of steps")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
