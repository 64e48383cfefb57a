"""The offline profiler's prediction against a real server, on the same traffic, same machine.

Runs the profiler (python -m sgl_dflash.profile: reference decoder + the
SGL_DFLASH server's own cost profile, measured once by a server and cached),
then serves the same traffic greedily with (a) an SGL_DFLASH server with the
adaptive controller loading that very profile file and (b) plain decoding,
one server at a time, rounds rotating their order. Each concurrency level
sends every request of the file through /generate with that many in flight
(prefix cache flushed before each level). Reports, per concurrency, predicted
vs measured output tokens/s (median of rounds, range) for the controller and
for no speculation, the measured accept length, and what the controller
picked. Writes bench/results/profile-check-DEVICE-DATE.md.

    python bench/profile_check.py                       # shipped pair, bench/traffic/example.jsonl
    python bench/profile_check.py --concurrency 1,8 --rounds 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from sgl_dflash import profile as profiler
from sgl_dflash.cost_profile import adaptive_server
from sgl_dflash.launcher import Server
from sgl_dflash.traffic import TrafficRequest

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "sgl_dflash" / "assets"
MODES = ("adaptive", "plain")


def serve(server: Server, reqs: list[TrafficRequest], concurrency: int) -> tuple[float, float]:
    """(output tokens/s, tokens committed per verify pass) for the whole list at this concurrency."""
    requests.post(f"{server.url}/flush_cache", timeout=30)

    def one(req: TrafficRequest) -> dict:
        return server.generate(req.prompt_ids, max_new_tokens=req.max_tokens, temperature=0)["meta_info"]

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        metas = list(pool.map(one, reqs))
    seconds = time.perf_counter() - start
    tokens = sum(m["completion_tokens"] for m in metas)
    verifies = sum(m.get("spec_verify_ct", 0) for m in metas)
    return tokens / seconds, (tokens / verifies if verifies else 1.0)


def start(mode: str, args: argparse.Namespace, profile_path: Path, work: Path) -> Server:
    log = work / f"{mode}-{time.time_ns()}.log"
    if mode == "plain":
        return Server(args.target, log).wait_ready()
    config = work / "adaptive.json"
    config.write_text(json.dumps({"profile_path": str(profile_path)}))
    return adaptive_server(args.target, args.draft, device="cpu", topk=args.topk, node_budget=args.num_draft_tokens,
                           config_path=config, log_path=log).wait_ready()


def budgets_used(log: str) -> dict[int, int]:
    """The controller's budget histogram, summed over its log lines."""
    total: dict[int, int] = {}
    for match in re.finditer(r"controller over \d+ steps: budgets (\{[^}]*\})", log):
        for n, count in json.loads(re.sub(r"(\d+):", r'"\1":', match.group(1))).items():
            total[int(n)] = total.get(int(n), 0) + count
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", type=Path, default=ASSETS / "tiny-target")
    ap.add_argument("--draft", type=Path, default=ASSETS / "tiny-draft")
    ap.add_argument("--traffic", type=Path, default=ROOT / "bench" / "traffic" / "example.jsonl")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--topk", type=int, default=4)
    ap.add_argument("--num-draft-tokens", type=int, default=32)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    today = datetime.date.today()
    device = platform.processor() or platform.machine()

    # 1. the prediction, exactly as a user gets it
    pargs = profiler.parse_args(["--target", str(args.target), "--draft", str(args.draft), "--traffic",
                                 str(args.traffic), "--concurrency", args.concurrency, "--topk", str(args.topk),
                                 "--num-draft-tokens", str(args.num_draft_tokens)])
    profiled = profiler.run(pargs)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    profiler.report(pargs, profiled, args.out_dir / f"profile-{args.traffic.stem}-cpu-{today}.md")
    taus = profiler.budget_taus(profiled.accepts, list(profiled.traffic.categories()), 0.0, profiled.budget_settings)
    predicted = {p.concurrency: p for p in profiler.predictions(profiled.profile, taus, pargs.concurrency)}

    # 2. reality: the same requests through real servers, rounds rotating the order
    work = Path(tempfile.mkdtemp(prefix="profile_check_"))
    measured: dict[tuple[str, int], list[tuple[float, float]]] = {}
    logs: list[str] = []
    for r in range(args.rounds):
        for mode in MODES[r % 2:] + MODES[: r % 2]:
            server = start(mode, args, profiled.profile.path, work)
            try:
                for c in pargs.concurrency:
                    measured.setdefault((mode, c), []).append(serve(server, profiled.traffic.requests, c))
                    print(f"round {r + 1} {mode} c={c}: {measured[mode, c][-1][0]:.1f} tok/s", flush=True)
                if mode == "adaptive":
                    logs.append(server.log())
            finally:
                server.stop()

    # 3. side by side
    picked = budgets_used("\n".join(logs))
    lines = [
        f"# Offline profiler vs real server, {today}",
        "",
        f"- device: CPU ({device}), SGLang on CPU (fp32, torch_native attention, 1 OMP thread per server as the "
        "launcher starts it); target `{}`, draft `{}`".format(args.target.name, args.draft.name),
        f"- traffic `{args.traffic.relative_to(ROOT) if args.traffic.is_relative_to(ROOT) else args.traffic}`: "
        f"{len(profiled.traffic.requests)} requests, greedy; each level sends them all with that many in flight",
        f"- cost profile: `{profiled.profile.path}` ({profiled.profile.source}); the adaptive server loaded the same file",
        f"- server: `--speculative-algorithm SGL_DFLASH --speculative-eagle-topk {args.topk} "
        f"--speculative-num-draft-tokens {args.num_draft_tokens} --speculative-adaptive`; {args.rounds} rounds, "
        "median (min-max)",
        "",
        "| concurrency | predicted (controller) | measured (adaptive server) | measured / predicted "
        "| predicted no spec. | measured plain | measured / predicted | predicted pick | tau predicted | tau measured |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, pred in predicted.items():
        spec = [m[0] for m in measured["adaptive", c]]
        plain = [m[0] for m in measured["plain", c]]
        tau_seen = statistics.median(m[1] for m in measured["adaptive", c])
        lines.append(
            f"| {c} | {pred.rates[pred.choice]:.1f} | {_med(spec)} | {statistics.median(spec) / pred.rates[pred.choice]:.2f} "
            f"| {pred.no_speculation:.1f} | {_med(plain)} | {statistics.median(plain) / pred.no_speculation:.2f} "
            f"| {'off' if pred.choice == 1 else f'N={pred.choice}'} | {taus.get(pred.choice, 1.0):.2f} | {tau_seen:.2f} |"
        )
    lines += ["", f"Budgets the adaptive server chose over all levels and rounds (steps): {picked}"]
    out = args.out_dir / f"profile-check-cpu-{today}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


def _med(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


if __name__ == "__main__":
    main()
