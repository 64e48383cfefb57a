"""Which request parameters give exactly plain decoding's output, per server: the matrix.

Runs the cases of tests/request_surface.py (greedy, the shipped tiny pair,
held-out prompts) against plain decoding with and without overlap
scheduling, SGLang's built-in DFLASH and SGL_DFLASH (chain and a top-4 tree
of 32 nodes), one server at a time, and marks each case "identical" or
"differs" against plain decoding without overlap scheduling (the exact
reference: with overlap on, SGLang applies penalties one token late).
Writes bench/results/request-surface-DATE.md.

    python bench/request_surface.py
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from transformers import AutoTokenizer

from sgl_dflash.launcher import Server
from sgl_dflash.training.corpus import heldout_prompts

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from request_surface import cases, differences, run  # noqa: E402

TARGET, DRAFT = ROOT / "sgl_dflash" / "assets" / "tiny-target", ROOT / "sgl_dflash" / "assets" / "tiny-draft"
COMMON = ("--enable-custom-logit-processor",)
SERVERS = {
    "plain (no overlap)": {"extra": COMMON + ("--disable-overlap-schedule",)},
    "plain (overlap)": {"extra": COMMON},
    "built-in DFLASH": {"draft": DRAFT, "algorithm": "DFLASH", "extra": COMMON},
    "SGL_DFLASH chain": {"draft": DRAFT, "extra": COMMON},
    "SGL_DFLASH tree k4 n32": {"draft": DRAFT, "block_size": 32, "extra": COMMON + ("--speculative-eagle-topk", "4")},
}


def main() -> None:
    prompts = heldout_prompts(AutoTokenizer.from_pretrained(TARGET), 3, 40, seed=4)
    logs = ROOT / ".cache" / "request-surface"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list]] = {}
    for name, spec in SERVERS.items():
        print(f"[surface] {name} ...", flush=True)
        with Server(TARGET, logs / f"{name.replace(' ', '_')}.log", **spec) as server:
            results[name] = {}
            for case in cases():
                try:
                    results[name][case.name] = [run(server.url, case, p) for p in prompts]
                except Exception as e:  # a server error is an answer too
                    results[name][case.name] = [f"error: {e}"]
    reference = results["plain (no overlap)"]
    names = list(SERVERS)[1:]
    lines = [
        f"# Request parameters vs plain decoding, {datetime.date.today()}",
        "",
        f"CPU, the shipped tiny pair, greedy, {len(prompts)} held-out prompts x 32 tokens per case; "
        "\"identical\" = same output ids, text and finish reason (logprobs within 1e-4) as plain decoding "
        "without overlap scheduling.",
        "",
        "| parameter | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for case in cases():
        cells = ["identical" if not differences(reference[case.name], results[n][case.name]) else "**differs**"
                 for n in names]
        lines.append(f"| {case.name} | " + " | ".join(cells) + " |")
    out = ROOT / "bench" / "results" / f"request-surface-{datetime.date.today()}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
