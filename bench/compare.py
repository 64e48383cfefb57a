"""Plain decoding vs built-in DFLASH vs SGL_DFLASH on the same target/draft, side by side.

Sends the same greedy workload to plain, built-in DFLASH and SGL_DFLASH
servers, one server at a time (idle SGLang servers poll and would steal CPU),
in --rounds rounds whose server order rotates, so drift in the machine's
speed hits all three alike.
Prints the median tokens/s with its min-max range, the ratios of the medians
to plain decoding and to the built-in DFLASH, and the mean accept length
(committed tokens per verify step). Writes the table to --out as markdown.

    python bench/compare.py                       # the shipped trained tiny pair, on CPU
    python bench/compare.py --flavour zero_head   # a made-up pair where every draft is accepted
    python bench/compare.py --target T --draft D --device cuda --block 16
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from transformers import AutoTokenizer

from sgl_dflash.draft_checkpoint import validate_draft
from sgl_dflash.launcher import Server
from sgl_dflash.training.corpus import heldout_prompts
from sgl_dflash.tiny_models import make_pair

ASSETS = Path(__file__).resolve().parent.parent / "sgl_dflash" / "assets"

MODES = [("plain", None), ("DFLASH", "DFLASH"), ("SGL_DFLASH", "SGL_DFLASH")]


def run_workload(server: Server, prompts: list[list[int]], concurrency: int, max_tokens: int) -> dict:
    def one(prompt: list[int]) -> dict:
        return server.generate(prompt, max_new_tokens=max_tokens, temperature=0, ignore_eos=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outs = list(pool.map(one, prompts))
    wall = time.perf_counter() - start
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    steps = sum(o["meta_info"].get("spec_verify_ct", 0) for o in outs)
    return {"tok_s": tokens / wall, "tau": tokens / steps if steps else 1.0, "outputs": outs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", type=Path)
    ap.add_argument("--draft", type=Path)
    ap.add_argument("--flavour", help="make a tiny pair of this flavour (random, zero_head, chain) instead")
    ap.add_argument("--block", type=int, help="default: the draft's block_size")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sgl_dflash_bench_"))
    if args.flavour:
        args.target, args.draft = make_pair(work / args.flavour, flavour=args.flavour, block_size=args.block or 4)
    elif args.target is None:
        args.target, args.draft = ASSETS / "tiny-target", ASSETS / "tiny-draft"
    # Resolves the block size as the server does (and fails the same way on a bad draft).
    args.block = validate_draft(str(args.draft), str(args.target), args.block).block_size
    levels = [int(c) for c in args.concurrency.split(",")]
    # Code-completion workload: held-out windows of the Python standard library.
    prompts = heldout_prompts(AutoTokenizer.from_pretrained(args.target), args.requests, 64, seed=2)
    runs: dict[tuple[str, int], list[dict]] = {(name, c): [] for name, _ in MODES for c in levels}
    for r in range(args.rounds):
        for name, algorithm in MODES[r % len(MODES):] + MODES[: r % len(MODES)]:
            spec = {} if algorithm is None else {"draft": args.draft, "algorithm": algorithm, "block_size": args.block}
            print(f"[bench] round {r + 1}/{args.rounds}: starting {name} server ...", flush=True)
            with Server(args.target, work / f"{name}.log", device=args.device, **spec) as server:
                server.generate(prompts[0], max_new_tokens=8, temperature=0)
                for c in levels:
                    runs[name, c].append(out := run_workload(server, prompts, c, args.max_tokens))
                    print(f"[bench] {name:<11} concurrency {c:>3}: {out['tok_s']:8.1f} tok/s  tau {out['tau']:.2f}",
                          flush=True)
    results = {key: {"tok_s": statistics.median(o["tok_s"] for o in outs), "lo": min(o["tok_s"] for o in outs),
                     "hi": max(o["tok_s"] for o in outs), "tau": outs[0]["tau"], "outputs": outs[0]["outputs"]}
               for key, outs in runs.items()}

    same = all(
        [o["output_ids"] for o in results[name, c]["outputs"]] == [o["output_ids"] for o in results["plain", c]["outputs"]]
        for name, _ in MODES for c in levels
    )
    lines = [
        f"# sgl-dflash benchmark, {datetime.date.today()}",
        "",
        f"device: {args.device} ({platform.processor() or platform.machine()}); target {args.target}; "
        f"draft {args.draft}; block {args.block}; {args.requests} requests x {args.max_tokens} tokens, greedy; "
        f"{args.rounds} rounds in rotating server order (median tokens/s, min-max in brackets); "
        f"outputs identical across modes: {same}",
        "",
        "| concurrency | mode | tokens/s | vs plain | vs built-in DFLASH | accept length |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for c in levels:
        for name, _ in MODES:
            r = results[name, c]
            lines.append(
                f"| {c} | {name} | {r['tok_s']:.1f} [{r['lo']:.0f}-{r['hi']:.0f}] | "
                f"{r['tok_s'] / results['plain', c]['tok_s']:.2f}x | "
                f"{r['tok_s'] / results['DFLASH', c]['tok_s']:.2f}x | {r['tau']:.2f} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
