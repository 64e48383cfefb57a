"""Serving benchmark: plain vs built-in DFLASH vs SGL_DFLASH, measured by SGLang's own bench_serving.

Each mode is a server started with the same target (one at a time by
default; --together K keeps K up at once, see below); SGLang's bench_serving
(`python -m sglang.bench_serving`, whose implementation is
`sglang.benchmark.serving`: run in this process through its own CLI parser,
so its import is paid once; the equivalent command is written to the report)
sends it the same held-out stdlib prompts (a local custom JSONL dataset, the
tokenizer from the local target dir, no hub) at each concurrency, greedy by
default, with the prefix cache flushed after its warm-up. Rounds rotate the
server order so drift in the machine's speed hits every mode alike; the
report gives medians over rounds with min-max ranges.

A shared CPU's speed drifts by 20% and more within minutes, so one server's
life (all its levels, several minutes) can run on a faster machine than the
next one's. --together K starts the modes K at a time, in --modes order
(each round starts them afresh, so every server still sees the levels in
order from a fresh start), and runs each level on every server of the group
in turn, the order rotated by round and level: the group's modes are then
measured minutes apart at every level, not a whole server life apart. Idle
servers wait on their sockets (--sleep-on-idle), but each holds its memory
(a twin-pair server ~5 GB on CPU). Put the modes whose comparison matters
most in one group: e.g. `plain`, the adaptive mode and `plain again` (the
noise band is then the gap of two servers measured side by side).

Reported per mode and concurrency: output tokens/s, the ratios to plain and
to built-in DFLASH (measured side by side in the same run), accept length
(the server's, over the measured requests), TTFT, TPOT and ITL (median and
p99), and whether every output equals plain decoding's (greedy). With
--step-timing, SGL_DFLASH servers run with SGL_DFLASH_STEP_TIMING=1 and the
report adds their draft / verify / other ms per step, parsed from the log.
With an adaptive mode (server args with --speculative-adaptive) the report
judges its goals (bench/goals.py): a second plain mode (e.g. `plain again`)
is a control server whose gap to the first measures the run's noise band.
Writes bench/results/serving-DEVICE-PAIR-DATE.md and .png.

Every run's raw results stay in a work folder (printed at the start): the
command line, each level's bench_serving JSONL and step-timing lines, the
server logs. `--report-from WORK` writes the report again from them without
running anything (e.g. after a crash in the report, or from the rounds an
interrupted run completed).

    python bench/compare.py                                # the inflated twin pair (made into .cache/ once)
    python bench/compare.py --pair tiny --concurrency 1,2 --rounds 1
    python bench/compare.py --target T --draft D --device cuda
    python bench/compare.py --modes 'plain,DFLASH,SGL_DFLASH,SGL_DFLASH tree k4 n32=--speculative-eagle-topk 4 --speculative-num-draft-tokens 32'
    python bench/compare.py --report-from /tmp/sgl_dflash_serving_XXXX --out bench/results/NAME.md

--modes is a comma-separated list of LABEL or LABEL=SERVER ARGS. The
label's first word picks the server: `plain` (no speculation), `DFLASH`
(SGLang's built-in) or `SGL_DFLASH` (this plugin); the rest of the label
names the configuration, and SERVER ARGS (shell syntax) are added to that
server's command line. A piece that does not start with one of those three
words continues the previous entry, so server args may contain commas.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from goals import goal_lines, judge, median_range, noise_band, paired_ratio
from schedule import groups, level_order, round_groups, side_by_side
from transformers import AutoTokenizer

from sgl_dflash.draft_checkpoint import validate_draft
from sgl_dflash.inflate import DEFAULT_DEPTH, DEFAULT_WIDTH, factor_type, inflate_pair, param_count
from sgl_dflash.launcher import Server, stop_all
from sgl_dflash.training.corpus import heldout_prompts

START = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "sgl_dflash" / "assets"
ALGORITHMS = ("plain", "DFLASH", "SGL_DFLASH")
STEP_TIMING = re.compile(
    r"SGL_DFLASH step timing over last 64 steps \(ms/step\): draft ([\d.]+) verify ([\d.]+) "
    r"other ([\d.]+) \(batch ([\d.]+)\)"
)
RUN_FILE = "run.json"  # in the work folder: the command line of the run
# bench_serving result keys reported, with their table headers
LATENCY = {"median_ttft_ms": "TTFT median", "median_tpot_ms": "TPOT median", "p99_tpot_ms": "TPOT p99",
           "median_itl_ms": "ITL median", "p99_itl_ms": "ITL p99"}


@dataclass(frozen=True)
class Mode:
    """A named server configuration: its algorithm is the label's first word."""

    label: str
    extra: tuple[str, ...] = ()

    @property
    def algorithm(self) -> str:
        return self.label.split()[0]


def parse_modes(text: str) -> list[Mode]:
    entries: list[str] = []
    for piece in text.split(","):
        if entries and piece.strip().split("=")[0].split()[:1] not in ([a] for a in ALGORITHMS):
            entries[-1] += "," + piece  # a comma inside the previous entry's server args
        else:
            entries.append(piece.strip())
    modes = []
    for entry in entries:
        label, _, args = entry.partition("=")
        mode = Mode(" ".join(label.split()), tuple(shlex.split(args)))
        if mode.algorithm not in ALGORITHMS:
            raise SystemExit(f"--modes: {entry!r} must start with one of {', '.join(ALGORITHMS)}.")
        modes.append(mode)
    if len({m.label for m in modes}) != len(modes):
        raise SystemExit(f"--modes: labels must be distinct, got {[m.label for m in modes]}.")
    return modes


@dataclass
class Run:
    """One bench_serving run (one mode, one concurrency, one round)."""

    result: dict
    step_timing: list[tuple[float, ...]] = field(default_factory=list)

    @property
    def tok_s(self) -> float:
        return self.result["output_throughput"]


def bench_serving_args(argv: list[str]) -> argparse.Namespace:
    """argv parsed by bench_serving's own CLI (its parser is built inside cli_main)."""
    from sglang.benchmark import serving  # on first use: the import takes ~20 s on CPU

    captured: list[argparse.Namespace] = []
    with mock.patch.object(serving, "run_benchmark", captured.append), \
            mock.patch.object(sys, "argv", ["bench_serving", *argv]):
        serving.cli_main()
    return captured[0]


def run_level(server: Server, argv: list[str], log: Path) -> Run:
    from sglang.benchmark import serving

    offset = len(server.log())
    with log.open("a") as f, contextlib.redirect_stdout(f):
        result = serving.run_benchmark(bench_serving_args(argv))
    timing = [tuple(map(float, m.groups())) for m in STEP_TIMING.finditer(server.log()[offset:])]
    return Run(result, timing)


def bench_argv(args: argparse.Namespace, url: str, dataset: Path, concurrency: int, out: Path) -> list[str]:
    return [
        "--backend", "sglang", "--base-url", url, "--model", str(args.target), "--tokenizer", str(args.target),
        "--dataset-name", "custom", "--dataset-path", str(dataset),
        "--num-prompts", str(num_prompts(args, concurrency)), "--sharegpt-output-len", str(args.max_tokens),
        "--max-concurrency", str(concurrency), "--temperature", str(args.temperature),
        "--flush-cache", "--output-details", "--output-file", str(out), "--disable-tqdm", "--seed", "1",
    ]


def num_prompts(args: argparse.Namespace, concurrency: int) -> int:
    return max(args.min_requests, args.requests_per_slot * concurrency)


def write_dataset(args: argparse.Namespace, path: Path) -> None:
    """Held-out stdlib windows (never trained on) as bench_serving's custom JSONL conversations."""
    tok = AutoTokenizer.from_pretrained(args.target)
    n = max(num_prompts(args, c) for c in args.concurrency)
    with path.open("w") as f:
        for ids in heldout_prompts(tok, n, args.prompt_len, seed=2):
            # The second turn only sets the output length, which --sharegpt-output-len overrides.
            turns = [{"content": tok.decode(ids)}, {"content": "-"}]
            f.write(json.dumps({"conversations": turns}) + "\n")


def resolve_pair(args: argparse.Namespace) -> str:
    """Sets args.target/args.draft; returns the pair's name for the report."""
    if args.target is not None:
        if args.draft is None:
            raise SystemExit("--target needs --draft.")
        return args.target.name
    if args.pair == "tiny":
        args.target, args.draft = ASSETS / "tiny-target", ASSETS / "tiny-draft"
        return "tiny"
    cache = ROOT / ".cache" / f"twin-w{args.width}-d{args.depth}"
    args.target, args.draft = cache / "target", cache / "draft"
    if not all((p / "model.safetensors").is_file() for p in (args.target, args.draft)):
        say(f"making the inflated twin in {cache} ...")
        inflate_pair(cache, width=args.width, depth=args.depth)
    return "twin"


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    return f"{model}, {os.cpu_count()} cores"


def start(args: argparse.Namespace, mode: Mode, log: Path) -> Server:
    env = {"OMP_NUM_THREADS": str(args.threads)} if args.device == "cpu" else {}
    spec: dict = {}
    if mode.algorithm != "plain":
        spec = {"draft": args.draft, "algorithm": mode.algorithm}
        if args.step_timing and mode.algorithm == "SGL_DFLASH":
            env["SGL_DFLASH_STEP_TIMING"] = "1"
    longest = args.prompt_len * 2 + args.max_tokens + 64  # re-tokenized text may be longer; spec headroom
    # Log every decode step: the server's accept length (read by bench_serving) only counts logged steps.
    extra = ("--decode-log-interval", "1", *mode.extra)
    return Server(args.target, log, device=args.device, env=env, extra=extra,
                  max_total_tokens=max(8192, max(args.concurrency) * longest), **spec).wait_ready()


def same_outputs(runs: dict, mode: Mode, plain: Mode, c: int) -> str:
    """Requests whose output equals plain decoding's in the same round (greedy only)."""
    pairs = [(a, b) for r_mode, r_plain in zip(runs[mode.label, c], runs[plain.label, c])
             for a, b in zip(r_mode.result["generated_texts"], r_plain.result["generated_texts"])]
    return f"{sum(a == b for a, b in pairs)}/{len(pairs)}"


def groups_text(args: argparse.Namespace) -> str:
    return "; ".join(", ".join(m.label for m in group) for group in groups(args.modes, args.together))


def report(args: argparse.Namespace, pair: str, modes: list[Mode], runs: dict, command: str) -> list[str]:
    labels = {m.label for m in modes}
    plain = next((m for m in modes if m.algorithm == "plain"), None)
    lines = [
        f"# Serving benchmark ({pair} pair, {args.device}), {args.date}",
        "",
        *([f"> Written again on {datetime.date.today()} from the run's raw results (`--report-from {args.report_from}`).",
           ""] if args.report_from else []),
        f"device: {args.device} ({device_name(args.device)}"
        + (f", server threads {args.threads}" if args.device == "cpu" else "") + ")",
        f"target `{args.target}` ({param_count(args.target) / 1e6:.0f}M parameters), draft `{args.draft}` "
        f"({param_count(args.draft) / 1e6:.0f}M parameters), block {args.block}",
        f"workload: held-out stdlib windows of {args.prompt_len} tokens, {args.max_tokens} output tokens, "
        f"temperature {args.temperature:g}, {args.requests_per_slot} x concurrency requests per level (at least "
        f"{args.min_requests}); {args.rounds} rounds in rotating server order"
        + (f", servers {args.together} at a time ({groups_text(args)}), each level run on every server of "
           "a group in turn" if args.together > 1 else "")
        + " (median over rounds, min-max in brackets)",
        f"client: SGLang bench_serving, e.g. `{command}`",
        "",
        "| concurrency | mode | output tok/s | vs plain | vs built-in DFLASH | accept length | same as plain |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    med = {key: statistics.median(r.tok_s for r in rs) for key, rs in runs.items()}
    for c in args.concurrency:
        for m in modes:
            tok, lo, hi = median_range([r.tok_s for r in runs[m.label, c]])
            accept = [r.result["accept_length"] for r in runs[m.label, c] if r.result.get("accept_length")]
            cells = [
                f"{tok:.1f} [{lo:.1f}-{hi:.1f}]",
                f"{tok / med[plain.label, c]:.2f}x" if plain else "-",
                f"{tok / med['DFLASH', c]:.2f}x" if "DFLASH" in labels else "-",
                f"{statistics.median(accept):.2f}" if accept else "-",
                same_outputs(runs, m, plain, c) if plain and args.temperature == 0 else "-",
            ]
            lines.append(f"| {c} | {m.label} | " + " | ".join(cells) + " |")
    lines += ["", "Latency (ms, median over rounds of bench_serving's per-run figures):", "",
              "| concurrency | mode | " + " | ".join(LATENCY.values()) + " |",
              "|---:|---|" + "---:|" * len(LATENCY)]
    for c in args.concurrency:
        for m in modes:
            cells = [f"{statistics.median(r.result[k] for r in runs[m.label, c]):.1f}" for k in LATENCY]
            lines.append(f"| {c} | {m.label} | " + " | ".join(cells) + " |")
    adaptive = next((m for m in modes if "--speculative-adaptive" in m.extra), None)
    if plain and adaptive:
        lines += ["", *goals_section(args, modes, med, plain, adaptive)]
    pairs = paired_comparisons(args, modes, plain, adaptive)
    if pairs:
        lines += ["", *paired_table(args, runs, pairs)]
    if args.step_timing:
        lines += ["", *step_timing_table(args, modes, runs)]
    return lines


def goals_section(args: argparse.Namespace, modes: list[Mode], med: dict, plain: Mode, adaptive: Mode) -> list[str]:
    """The adaptive mode's goals (bench/goals.py); a second plain mode is the noise control."""
    control = next((m.label for m in modes if m.algorithm == "plain" and m != plain), None)
    band = noise_band(med, plain.label, control, args.concurrency) if control else 0.0
    fixed = [m.label for m in modes if m.algorithm != "plain" and "--speculative-adaptive" not in m.extra]
    dflash = next((m.label for m in modes if m.algorithm == "DFLASH"), None)
    goals = judge(med, args.concurrency, plain.label, adaptive.label, fixed, dflash, band)
    return goal_lines(goals, adaptive.label, band, control)


def paired_comparisons(args: argparse.Namespace, modes: list[Mode], plain: Mode | None,
                       adaptive: Mode | None) -> list[tuple[Mode, Mode]]:
    """(numerator, denominator) of the paired ratios: every mode up at once with plain, over plain;
    the adaptive mode over every fixed speculative mode up at once with it."""
    pairs = []
    if plain is not None:
        pairs += [(m, plain) for m in modes if m != plain and side_by_side(modes, args.together, m, plain)]
    if adaptive is not None:
        pairs += [(adaptive, m) for m in modes if m.algorithm != "plain" and m != adaptive
                  and side_by_side(modes, args.together, m, adaptive)]
    return pairs


def paired_table(args: argparse.Namespace, runs: dict, pairs: list[tuple[Mode, Mode]]) -> list[str]:
    lines = ["Paired by round (servers up at once: the ratio of their tok/s at the same level and round, "
             "measured minutes apart, so the machine's drift between rounds cancels; median over rounds "
             "[min-max]):", "",
             "| ratio at concurrency | " + " | ".join(str(c) for c in args.concurrency) + " |",
             "|---|" + "---:|" * len(args.concurrency)]
    for num, den in pairs:
        cells = []
        for c in args.concurrency:
            mid, lo, hi = paired_ratio([r.tok_s for r in runs[num.label, c]], [r.tok_s for r in runs[den.label, c]])
            cells.append(f"{mid:.2f} [{lo:.2f}-{hi:.2f}]")
        lines.append(f"| {num.label} / {den.label} | " + " | ".join(cells) + " |")
    return lines


def step_timing_table(args: argparse.Namespace, modes: list[Mode], runs: dict) -> list[str]:
    timed = [m for m in modes if m.algorithm == "SGL_DFLASH"]
    rows = []
    for c in args.concurrency:
        for m in timed:
            samples = [t for r in runs[m.label, c] for t in r.step_timing]
            if samples:
                draft, verify, other, batch = (statistics.fmean(col) for col in zip(*samples))
                rows.append(f"| {c} | {m.label} | {draft:.2f} | {verify:.2f} | {other:.2f} | {batch:.1f} | "
                            f"{len(samples)} |")
    if not rows:
        return ["Step timing: no `SGL_DFLASH step timing` lines in the SGL_DFLASH server logs (the worker "
                "did not log them, or fewer than 64 steps ran per level)."]
    return ["SGL_DFLASH time per speculative step (ms, mean of the worker's 64-step lines logged during "
            "the level, SGL_DFLASH_STEP_TIMING=1; a line may cover steps of the level before):", "",
            "| concurrency | mode | draft | verify | other | batch | lines |", "|---:|---|---:|---:|---:|---:|---:|",
            *rows]


def plot(args: argparse.Namespace, modes: list[Mode], runs: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain = next((m for m in modes if m.algorithm == "plain"), None)
    fig, axes = plt.subplots(1, 2 if plain else 1, figsize=(12 if plain else 6, 4.5), squeeze=False)
    levels = args.concurrency
    for m in modes:
        med, lo, hi = zip(*(median_range([r.tok_s for r in runs[m.label, c]]) for c in levels))
        axes[0, 0].errorbar(levels, med, yerr=[[a - b for a, b in zip(med, lo)], [b - a for a, b in zip(med, hi)]],
                            marker="o", capsize=3, label=m.label)
        if plain:
            base = [statistics.median(r.tok_s for r in runs[plain.label, c]) for c in levels]
            axes[0, 1].plot(levels, [a / b for a, b in zip(med, base)], marker="o", label=m.label)
    axes[0, 0].set_ylabel("output tokens/s (median, min-max)")
    if plain:
        axes[0, 1].axhline(1.0, color="gray", lw=0.8)
        axes[0, 1].set_ylabel("output tokens/s vs plain")
    for ax in axes[0]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrency")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_all(args: argparse.Namespace, modes: list[Mode], dataset: Path, work: Path) -> dict:
    """Every mode at every concurrency, servers and levels in bench/schedule.py's order."""
    runs: dict[tuple[str, int], list[Run]] = {(m.label, c): [] for m in modes for c in args.concurrency}
    for r in range(args.rounds):
        for group in round_groups(modes, args.together, r):
            servers: dict[str, Server] = {}
            try:
                for m in group:
                    say(f"round {r + 1}/{args.rounds}: starting {m.label} server ...")
                    servers[m.label] = start(args, m, work / f"{slug(m)}-r{r}.log")
                for i, c in enumerate(args.concurrency):
                    for m in level_order(group, r, i):
                        run_one(args, m, servers[m.label], c, r, dataset, work, runs)
            finally:
                stop_all(servers.values())
    return runs


def raw_path(work: Path, m: Mode, r: int, c: int, suffix: str) -> Path:
    """A level's raw result in the work folder: .jsonl (bench_serving's) or .timing.json (step timing)."""
    return work / f"{slug(m)}-r{r}-c{c}{suffix}"


def load_runs(args: argparse.Namespace, modes: list[Mode], work: Path) -> dict:
    """The runs of an earlier run from its work folder: every round whose levels all completed."""
    complete = [r for r in range(args.rounds)
                if all(raw_path(work, m, r, c, ".jsonl").is_file() for m in modes for c in args.concurrency)]
    if not complete:
        raise SystemExit(f"--report-from {work}: no round has results for every mode and concurrency.")
    if len(complete) < args.rounds:
        say(f"{len(complete)} of {args.rounds} rounds completed (rounds {[r + 1 for r in complete]}): reporting those")
        args.rounds = len(complete)
    runs: dict[tuple[str, int], list[Run]] = {}
    for m in modes:
        for c in args.concurrency:
            runs[m.label, c] = []
            for r in complete:
                timing = raw_path(work, m, r, c, ".timing.json")
                runs[m.label, c].append(Run(
                    json.loads(raw_path(work, m, r, c, ".jsonl").read_text().splitlines()[-1]),
                    [tuple(t) for t in json.loads(timing.read_text())] if timing.is_file() else [],
                ))
    return runs


def slug(mode: Mode) -> str:
    return re.sub(r"\W+", "_", mode.label)


def run_one(args: argparse.Namespace, m: Mode, server: Server, c: int, r: int, dataset: Path, work: Path,
            runs: dict) -> None:
    """One level on one server, recorded in runs and reported on the console."""
    argv = bench_argv(args, server.url, dataset, c, raw_path(work, m, r, c, ".jsonl"))
    run = run_level(server, argv, work / f"{slug(m)}-r{r}.bench.log")
    raw_path(work, m, r, c, ".timing.json").write_text(json.dumps(run.step_timing))
    runs[m.label, c].append(run)
    res = run.result
    accept = f"{res['accept_length']:.2f}" if res.get("accept_length") else "-"
    say(f"  {m.label:<12} concurrency {c:>3}: {run.tok_s:8.1f} tok/s  TPOT "
        f"{res['median_tpot_ms']:7.1f} ms  TTFT {res['median_ttft_ms']:7.1f} ms  accept {accept}  "
        f"({res['completed']} requests)")


def say(msg: str) -> None:
    print(f"[bench {(time.perf_counter() - START) / 60:5.1f} min] {msg}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--pair", default="twin", choices=["twin", "tiny"],
                    help="twin: the shipped pair inflated (sgl-dflash-make-tiny inflate), made once into .cache/")
    ap.add_argument("--width", type=factor_type("width"), default=DEFAULT_WIDTH, help="twin width factor")
    ap.add_argument("--depth", type=factor_type("depth"), default=DEFAULT_DEPTH, help="twin depth factor")
    ap.add_argument("--target", type=Path, help="a real target instead of --pair (with --draft)")
    ap.add_argument("--draft", type=Path)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="CPU server threads (the client needs a core too)")
    ap.add_argument("--modes", default=",".join(ALGORITHMS), type=parse_modes, help="see below")
    ap.add_argument("--concurrency", default=[1, 2, 4, 8, 16, 32], type=lambda s: [int(c) for c in s.split(",")])
    ap.add_argument("--requests-per-slot", type=int, default=1, help="requests per level = this x concurrency ...")
    ap.add_argument("--min-requests", type=int, default=4, help="... but at least this many")
    ap.add_argument("--prompt-len", type=int, default=64, help="tokens per held-out prompt window")
    ap.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (outputs checked against plain)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--together", type=int, default=1,
                    help="servers up at once, run level by level in turn (see above; each holds its memory)")
    ap.add_argument("--step-timing", action="store_true", help="SGL_DFLASH draft/verify/other ms per step")
    ap.add_argument("--out", type=Path, help="report path (.md; the plot goes next to it as .png)")
    ap.add_argument("--report-from", type=Path, metavar="WORK",
                    help="report an earlier run again from its work folder (its command line and raw results)")
    args = ap.parse_args()
    if args.report_from is not None:
        work = args.report_from
        if not (work / RUN_FILE).is_file():
            raise SystemExit(f"--report-from {work}: no {RUN_FILE} there (not a compare.py work folder).")
        out, stored = args.out, json.loads((work / RUN_FILE).read_text())
        args = ap.parse_args(stored["argv"])
        args.out, args.report_from, args.date = out or args.out, work, datetime.date.fromisoformat(stored["date"])
    else:
        args.date = datetime.date.today()
    if args.together < 1:
        raise SystemExit("--together must be at least 1.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    pair = resolve_pair(args)
    args.block = validate_draft(str(args.draft), str(args.target)).block_size
    args.out = args.out or ROOT / "bench" / "results" / f"serving-{args.device}-{pair}-{args.date}.md"
    if args.report_from is None:
        work = Path(tempfile.mkdtemp(prefix="sgl_dflash_serving_"))
        (work / RUN_FILE).write_text(json.dumps({"argv": sys.argv[1:], "date": args.date.isoformat()}))
        write_dataset(args, work / "heldout.jsonl")
        say(f"{pair} pair: target {args.target}, draft {args.draft}; logs and raw results in {work}")
        runs = run_all(args, args.modes, work / "heldout.jsonl", work)
    else:
        work = args.report_from
        runs = load_runs(args, args.modes, work)
    dataset = work / "heldout.jsonl"
    command = "python -m sglang.bench_serving " + shlex.join(
        bench_argv(args, "http://HOST:PORT", dataset, args.concurrency[0], Path("OUT.jsonl")))
    lines = report(args, pair, args.modes, runs, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    plot(args, args.modes, runs, f"{pair} pair, {args.device} ({device_name(args.device)}), {args.date}",
         args.out.with_suffix(".png"))
    print("\n".join(lines))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
