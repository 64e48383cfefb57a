"""Helpers for launch/test_gpu.sh's device run: a results file written as the run goes, the
servers' own state, cold-start and JIT tables, and a summary of a serving sweep cut short.

    python tests/gpu/gpu_report.py jit SINCE     # JIT builds (FlashInfer, SGLang, Triton) made since epoch SINCE
    python tests/gpu/gpu_report.py sweep WORK    # a bench/compare.py work folder's completed levels, as a table

Nothing here needs a GPU; the tests in this folder and test_gpu.sh use it.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import requests

RESULTS_ENV = "DFLASH_GPU_RESULTS"
DEADLINE_ENV = "DFLASH_GPU_DEADLINE"
WORKER_STATE_KEY = "sgl_dflash"  # sgl_dflash.algorithm.STATE_KEY (not imported: that pulls in SGLang)


def note(text: str) -> None:
    """Append a markdown line (or block) to the results file, if the run names one."""
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a") as f:
            f.write(text.rstrip("\n") + "\n")


def deadline() -> Optional[float]:
    value = os.environ.get(DEADLINE_ENV)
    return float(value) if value else None


def seconds_left(default: float) -> float:
    """Seconds to the run's deadline (default where there is none)."""
    end = deadline()
    return default if end is None else end - time.time()


# ------------------------------------------------------------------ servers


def server_info(url: str) -> dict:
    """GET /server_info: the resolved args, SGLang's startup_time and internal_states per DP rank."""
    r = requests.get(f"{url}/server_info", timeout=60)
    r.raise_for_status()
    return r.json()


def worker_state(url: str) -> Optional[dict]:
    """The SGL_DFLASH worker's counters (SglDFlashWorker.internal_state), None on other servers."""
    return server_info(url)["internal_states"][0].get(WORKER_STATE_KEY)


def generate(url: str, input_ids: list[int], timeout: float = 300, **fields: Any) -> dict:
    """POST /generate with request fields (return_logprob, top_logprobs_num...) beside sampling_params."""
    r = requests.post(f"{url}/generate", json={"input_ids": input_ids, **fields}, timeout=timeout)
    r.raise_for_status()
    return r.json()


def startup_row(name: str, ready_s: float, info: dict) -> str:
    """A cold-start table row: our time to ready, then SGLang's own startup_time breakdown."""
    st = info.get("startup_time") or {}
    graphs = {k: v for k, v in (st.get("cuda_graph") or {}).items() if v}
    cells = [f"{ready_s:.1f}", *(f"{st.get(k, 0.0):.1f}" for k in ("tokenizer_e2e", "scheduler_e2e",
                                                                     "load_weight", "kv_cache_allocation")),
             ", ".join(f"{k} {v:.1f}" for k, v in graphs.items()) or "none"]
    return f"| {name} | " + " | ".join(cells) + " |"


STARTUP_HEADER = ["| server | ready (s) | tokenizer e2e | scheduler e2e | load weights | KV alloc | "
                  "CUDA graph capture by phase (s) |", "|---|---:|---:|---:|---:|---:|---|"]


# ---------------------------------------------------------------------- JIT


def _mtimes(files: list[Path]) -> list[float]:
    return [f.stat().st_mtime for f in files if f.is_file()]


def _roots(*candidates: Optional[str]) -> list[Path]:
    """Existing folders among the candidates, each once."""
    seen: dict[Path, None] = {}
    for c in candidates:
        if c:
            p = Path(c).expanduser()
            if p.is_dir():
                seen.setdefault(p.resolve(), None)
    return list(seen)


def jit_builds(since: float) -> list[tuple[str, str, float, bool]]:
    """(cache, module, build seconds, built since `since`) for every cached JIT module found.

    A module's build time is read from its cache folder: the build file is written when the
    build starts and the shared library linked when it ends (FlashInfer builds in place;
    SGLang builds in a staging folder renamed into the cache, which keeps the files' times).
    Importing sglang points FlashInfer's and Triton's caches into SGLANG_CACHE_DIR
    (~/.cache/sglang) unless set; processes that do not import it use their own defaults.
    """
    env, home = os.environ.get, Path.home()
    sglang_cache = env("SGLANG_CACHE_DIR") or str(home / ".cache" / "sglang")
    out = []
    for base in _roots(*(str(Path(b).expanduser() / ".cache" / "flashinfer")
                         for b in (env("FLASHINFER_WORKSPACE_BASE"), sglang_cache, str(home)) if b)):
        for so in sorted(base.glob("*/*/cached_ops/*/*.so")):
            ninja = so.parent / "build.ninja"
            start = ninja.stat().st_mtime if ninja.is_file() else min(_mtimes(list(so.parent.iterdir())))
            out.append(("flashinfer", so.parent.name, so.stat().st_mtime - start, so.stat().st_mtime >= since))
    for root in _roots(env("SGLANG_JIT_CACHE_DIR"), str(home / ".cache" / "sglang" / "jit")):
        for so in sorted(root.rglob("*.so")):
            leaf = next((p for p in so.parents if p.name.startswith("build-")), so.parent)
            times = _mtimes(list(leaf.rglob("*")))
            name = leaf.parent.name if leaf.name.startswith("build-") else leaf.name
            out.append(("sglang", name, max(times) - min(times), so.stat().st_mtime >= since))
    for root in _roots(env("TRITON_CACHE_DIR"), str(Path(sglang_cache) / "triton"), str(home / ".triton" / "cache")):
        fresh = [d for d in root.iterdir() if d.is_dir() and d.stat().st_mtime >= since]
        if fresh:
            span = _mtimes([f for d in fresh for f in d.iterdir()])
            out.append(("triton", f"{len(fresh)} kernels in {root}", max(span) - min(span), True))
    return out


def jit_table(since: float) -> list[str]:
    rows = jit_builds(since)
    if not rows:
        return ["No JIT-built modules found in the FlashInfer, SGLang or Triton caches."]
    lines = ["| cache | module | build (s) | built in this run |", "|---|---|---:|---|"]
    lines += [f"| {cache} | `{name}` | {sec:.1f} | {'yes' if fresh else 'no (cached before)'} |"
              for cache, name, sec, fresh in rows]
    total = sum(sec for cache, _, sec, fresh in rows if fresh and cache != "triton")
    lines.append(f"\nFlashInfer + SGLang modules built in this run: "
                 f"{sum(1 for c, _, _, f in rows if f and c != 'triton')}, {total:.0f} s of build time "
                 "(builds of different modules overlap in time; the same module is built once, under a lock). "
                 "Triton: the span from its first to last kernel written in this run (not build time alone).")
    return lines


# -------------------------------------------------------------------- sweep

LEVEL = re.compile(r"^(?P<slug>.+)-r(?P<round>\d+)-c(?P<c>\d+)\.jsonl$")
LATENCY = {"median_tpot_ms": "TPOT p50", "p99_tpot_ms": "TPOT p99", "median_itl_ms": "ITL p50",
           "p99_itl_ms": "ITL p99", "median_ttft_ms": "TTFT p50"}


def sweep_summary(work: Path) -> list[str]:
    """The levels a bench/compare.py work folder completed, as a table (for a run cut short).

    compare.py reports only complete rounds; this reads bench_serving's raw result of every
    level that finished, with ratios to plain and to built-in DFLASH where those ran the level.
    """
    results: dict[tuple[str, int], list[dict]] = {}
    for path in sorted(work.glob("*.jsonl")):
        m = LEVEL.match(path.name)
        lines = path.read_text().splitlines() if m else []
        if lines:
            results.setdefault((m["slug"], int(m["c"])), []).append(json.loads(lines[-1]))
    if not results:
        return [f"No completed level in {work}."]
    slugs = list(dict.fromkeys(s for s, _ in results))
    levels = sorted({c for _, c in results})
    tok = {k: statistics.median(r["output_throughput"] for r in rs) for k, rs in results.items()}
    lines = [f"Levels completed in `{work}` (bench_serving's raw results, median over rounds):", "",
             "| concurrency | mode | output tok/s | vs plain | vs DFLASH | accept length | same as plain | "
             + " | ".join(LATENCY.values()) + " |", "|---:|---|---:|---:|---:|---:|---:|" + "---:|" * len(LATENCY)]
    for c in levels:
        for slug in slugs:
            if (slug, c) not in results:
                continue
            rs = results[slug, c]
            accept = [r["accept_length"] for r in rs if r.get("accept_length")]
            same = "-"
            if slug != "plain" and ("plain", c) in results:
                pairs = [(a, b) for r, p in zip(rs, results["plain", c])
                         for a, b in zip(r.get("generated_texts", []), p.get("generated_texts", []))]
                same = f"{sum(a == b for a, b in pairs)}/{len(pairs)}" if pairs else "-"
            cells = [f"{tok[slug, c]:.1f}",
                     f"{tok[slug, c] / tok['plain', c]:.2f}x" if ("plain", c) in tok else "-",
                     f"{tok[slug, c] / tok['DFLASH', c]:.2f}x" if ("DFLASH", c) in tok else "-",
                     f"{statistics.median(accept):.2f}" if accept else "-", same,
                     *(f"{statistics.median(r[k] for r in rs):.1f}" if all(k in r for r in rs) else "-"
                       for k in LATENCY)]
            lines.append(f"| {c} | {slug} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "jit":
        print("\n".join(jit_table(float(argv[1]))))
    elif len(argv) == 2 and argv[0] == "sweep":
        print("\n".join(sweep_summary(Path(argv[1]))))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
