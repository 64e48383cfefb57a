"""Will DFlash pay on my traffic? Accept lengths on the user's requests and the speedup they buy here.

    python -m sgl_dflash.profile --target T --draft D --traffic my.jsonl [--concurrency 1,8,32]

Runs the target and the drafter with the reference decoder (the same trees
and decisions as the SGL_DFLASH server, greedy and at ``--temperature``) on
each request of the traffic file, and reports per category: the accept
length tau (tokens committed per verify pass) of the chain and of trees at
each node budget, the histogram of accepted drafts, and at each concurrency
the output tokens/s the server's cost model predicts for every budget, the
budget the adaptive controller would pick and its speedup over no
speculation. The cost model is the server's own startup profile
(cost_profile.py): ``--profile FILE`` as a server wrote it, else one this
command has measured before for the same setup, else one measured now by a
real server. Writes a markdown report and a PNG plot next to it.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from sgl_dflash.cost_profile import CostProfile, Prediction, default_path, load_profile, predict, server_profile
from sgl_dflash.kernels.tree_build import max_tree_nodes
from sgl_dflash.traffic import ON_BAD_LINE, DEFAULT_MAX_TOKENS, Traffic, TrafficError, read_traffic
from sgl_dflash.training.dflash_trainer import TrainingInputError, load_target
from sgl_dflash.training.drafter import DFlashDrafter
from sgl_dflash.training.reference_decoder import dflash_proposer, speculative_decode


@dataclass(frozen=True)
class Setting:
    """One way to speculate: top-k K at each block position, N verified nodes (root included)."""

    topk: int
    nodes: int

    @property
    def label(self) -> str:
        return f"chain N={self.nodes}" if self.topk == 1 else f"tree K={self.topk} N={self.nodes}"


ALL_TRAFFIC = "(all traffic)"
# (category, temperature, setting) -> accepted drafts of every speculative step
Accepts = dict[tuple[str, float, Setting], list[int]]


def settings_for(block_size: int, topk: int, budgets: list[int]) -> list[Setting]:
    """The chain of the whole block, then the controller's candidates (its top-k at each budget > 1)."""
    chain = Setting(1, block_size)
    trees = [Setting(topk, n) for n in budgets if n > 1 and max_tree_nodes(topk, block_size - 1, n) == n]
    return [chain] + [s for s in trees if s != chain]


def measure_accepts(target, drafter: DFlashDrafter, traffic: Traffic, settings: list[Setting],
                    temperatures: list[float], eos_token_id: Optional[int], seed: int = 0) -> Accepts:
    """Run every request under every setting with the reference decoder; keep each step's accepted drafts."""
    proposers = {k: dflash_proposer(target, drafter, k) for k in {s.topk for s in settings}}
    accepts: Accepts = {}
    total = len(traffic.requests) * len(settings) * len(temperatures)
    with tqdm(total=total, desc="reference decoding", unit="req", file=sys.stderr) as bar:
        for temp in temperatures:
            for s in settings:
                gen = torch.Generator().manual_seed(seed)
                for req in traffic.requests:
                    _, accepted = speculative_decode(
                        target, proposers[s.topk], req.prompt_ids, req.max_tokens, drafter.block_size,
                        eos_token_id, temp, gen, num_nodes=s.nodes,
                    )
                    accepts.setdefault((req.category, temp, s), []).extend(accepted)
                    bar.update()
    return accepts


def budget_taus(accepts: Accepts, categories: list[str], temp: float, budget_settings: dict[int, Setting]) -> dict[int, float]:
    """budget -> tau of its setting over the requests of these categories together."""
    return {n: tau([a for c in categories for a in accepts[c, temp, s]]) for n, s in budget_settings.items()}


def tau(accepted: list[int]) -> float:
    """Tokens committed per verify pass: accepted drafts + the bonus token (1 when nothing was verified)."""
    return 1.0 + sum(accepted) / len(accepted) if accepted else 1.0


def predictions(profile: CostProfile, taus: dict[int, float], concurrency: list[int]) -> list[Prediction]:
    """taus: budget -> tau of the controller's tree at that budget (budget 1 is added: tau 1)."""
    costs = profile.cost_model()
    curve = {1: 1.0, **{n: t for n, t in taus.items() if n in profile.budgets}}
    return [predict(costs, curve, c) for c in concurrency]


@dataclass
class Profiled:
    """Everything a report (or a check against a real server) needs."""

    traffic: Traffic
    profile: CostProfile
    settings: list[Setting]  # the chain first, then the controller's trees by budget
    topk: int  # the controller's top-k (the profile's)
    temperatures: list[float]  # 0 (greedy) first
    accepts: Accepts

    @property
    def budget_settings(self) -> dict[int, Setting]:
        """node budget -> the setting the controller verifies at that budget."""
        return {s.nodes: s for s in self.settings if s.topk == self.topk}


# ------------------------------------------------------------------ report


def report(args: argparse.Namespace, p: Profiled, out: Path) -> str:
    traffic, profile, settings, temperatures, accepts = p.traffic, p.profile, p.settings, p.temperatures, p.accepts
    concurrency, budget_settings = args.concurrency, p.budget_settings
    categories = list(traffic.categories())
    lines = [
        f"# Will DFlash pay on this traffic? {datetime.date.today()}",
        "",
        f"- traffic: `{traffic.path}`, {len(traffic.requests)} requests "
        + ", ".join(f"{c}: {len(r)}" for c, r in traffic.categories().items())
        + (f"; {len(traffic.skipped)} bad lines skipped" if traffic.skipped else ""),
        f"- target `{args.target}`, draft `{args.draft}` (block size {settings[0].nodes}), "
        f"reference decoder on {args.device}",
        f"- cost profile: `{profile.path}` ({profile.source}); measured on "
        f"{profile.key.get('device', '?')} with {profile.key.get('threads', '?')} threads, "
        f"batch sizes {profile.profile['batch_sizes']}, budgets {profile.budgets}; refined by "
        f"{profile.refined_steps} real server steps"
        + ("" if profile.refined_steps else " (none: the scheduler's own per-step work is not in it, "
           "so predicted rates are too high, the more so the smaller the model)"),
        "",
        "tau = tokens committed per verify pass (accepted drafts + 1). Predicted tokens/s = "
        "concurrency x tau / step seconds of the cost profile; budget 1 is a decode step without "
        "speculation through the SGL_DFLASH worker (the baseline; on small models it is slower than plain "
        "decoding, see bench/profile_check.py); the choice is the budget the adaptive controller would favour "
        "(`--speculative-adaptive`).",
    ]
    for temp in temperatures:
        name = "greedy" if temp == 0 else f"temperature {temp:g}"
        lines += ["", f"## Accept length, {name}", "",
                  "| category | " + " | ".join(s.label for s in settings) + " |",
                  "|---|" + "---:|" * len(settings)]
        for cat in categories:
            lines.append(f"| {cat} | " + " | ".join(f"{tau(accepts[cat, temp, s]):.2f}" for s in settings) + " |")
        widest = max(settings, key=lambda s: (s.nodes, s.topk))
        shown = [settings[0], widest] if widest != settings[0] else [widest]
        depth = 1 + max(max(accepts[cat, temp, s], default=0) for cat in categories for s in shown)
        lines += ["", f"Accept-length histogram ({name}; share of verify passes committing t tokens)", "",
                  "| category | setting | " + " | ".join(f"t={t}" for t in range(1, depth + 1)) + " |",
                  "|---|---|" + "---:|" * depth]
        for cat in categories:
            for s in shown:
                counts = Counter(accepts[cat, temp, s])
                steps = max(sum(counts.values()), 1)
                cells = [f"{counts.get(t - 1, 0) / steps:.0%}" for t in range(1, depth + 1)]
                lines.append(f"| {cat} | {s.label} | " + " | ".join(cells) + " |")
        lines += ["", f"## Predicted output tokens/s on this machine, {name}", "",
                  "| category | concurrency | no speculation | "
                  + " | ".join(f"N={n}" for n in sorted(budget_settings)) + " | controller picks | speedup |",
                  "|---|---:|---:|" + "---:|" * len(budget_settings) + "---:|---:|"]
        groups = {cat: [cat] for cat in categories}
        if len(categories) > 1:
            groups[ALL_TRAFFIC] = categories
        for name, cats in groups.items():
            for pred in predictions(profile, budget_taus(accepts, cats, temp, budget_settings), concurrency):
                cells = [f"{pred.rates[n]:.1f}" if n in pred.rates else "-" for n in sorted(budget_settings)]
                pick = "no speculation" if pred.choice == 1 else f"N={pred.choice}"
                lines.append(f"| {name} | {pred.concurrency} | {pred.no_speculation:.1f} | " + " | ".join(cells)
                             + f" | {pick} | {pred.speedup:.2f}x |")
    if traffic.skipped:
        lines += ["", "## Lines skipped", ""] + [f"- {m}" for m in traffic.skipped]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    plot(p, categories, concurrency, out.with_suffix(".png"))
    return text


def plot(p: Profiled, categories: list[str], concurrency: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accepts, budget_settings = p.accepts, p.budget_settings
    fig, axes = plt.subplots(len(p.temperatures), 2, figsize=(11, 4 * len(p.temperatures)), squeeze=False)
    for row, temp in zip(axes, p.temperatures):
        name = "greedy" if temp == 0 else f"T={temp:g}"
        for cat in categories:
            ns = sorted(budget_settings)
            line = row[0].plot(ns, [tau(accepts[cat, temp, budget_settings[n]]) for n in ns], marker="o", label=cat)
            row[0].axhline(tau(accepts[cat, temp, p.settings[0]]), ls=":", color=line[0].get_color())
            taus = budget_taus(accepts, [cat], temp, budget_settings)
            row[1].plot(concurrency, [q.speedup for q in predictions(p.profile, taus, concurrency)], marker="o", label=cat)
        row[0].set(xscale="log", xlabel="node budget N (dotted: the chain)", ylabel="accept length tau",
                   title=f"accept length, {name}")
        row[1].set(xscale="log", xlabel="concurrency", ylabel="predicted speedup over no speculation",
                   title=f"controller's pick, {name}")
        row[1].axhline(1.0, color="grey", lw=0.8)
        for ax in row:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ CLI


def resolve_profile(args: argparse.Namespace, traffic: Traffic) -> CostProfile:
    if args.profile is not None:
        return load_profile(args.profile, "given with --profile")
    path = default_path(args.target, args.draft, args.device, args.topk, args.num_draft_tokens)
    if path.is_file():
        return load_profile(path, "measured earlier by this command for the same setup")
    print(f"no cost profile for this setup yet: starting an SGL_DFLASH server to measure one ({path}); "
          "it serves a few of these requests at each concurrency to learn the scheduler's per-step work",
          file=sys.stderr, flush=True)
    return server_profile(args.target, args.draft, device=args.device, topk=args.topk,
                          node_budget=args.num_draft_tokens, path=path,
                          calibration=[r.prompt_ids for r in traffic.requests], concurrency=args.concurrency)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m sgl_dflash.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", type=Path, required=True, help="target model directory (Hugging Face format)")
    ap.add_argument("--draft", type=Path, required=True, help="DFlash drafter directory")
    ap.add_argument("--traffic", type=Path, required=True,
                    help='JSONL: one request per line, "prompt" or "messages", optional "category", "max_tokens"')
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrencies to predict")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="also sample at this temperature (greedy is always measured)")
    ap.add_argument("--topk", type=int, default=4, help="top-k of the trees (--speculative-eagle-topk)")
    ap.add_argument("--num-draft-tokens", type=int, default=32,
                    help="largest node budget (--speculative-num-draft-tokens)")
    ap.add_argument("--profile", type=Path, help="a cost profile written by an SGL_DFLASH server "
                    "(its --speculative-adaptive-config profile_path); default: measure one once")
    ap.add_argument("--max-requests", type=int, help="only the first N requests of the file")
    ap.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                    help="new tokens for requests without max_tokens")
    ap.add_argument("--on-bad-line", choices=ON_BAD_LINE, default="stop",
                    help="a malformed line stops the run (default) or is skipped and listed in the report")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="report path (.md; the .png goes next to it); "
                    "default: profile-<traffic name>-<date>.md in the current directory")
    args = ap.parse_args(argv)
    try:
        args.concurrency = sorted({int(c) for c in args.concurrency.split(",")})
    except ValueError:
        ap.error(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")
    if args.concurrency[0] < 1 or args.topk < 1 or args.num_draft_tokens < 1 or args.temperature < 0:
        ap.error("--concurrency, --topk and --num-draft-tokens must be >= 1, --temperature >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible")
    return args


def run(args: argparse.Namespace) -> Profiled:
    """Read the traffic, get the cost profile, decode every request under every setting."""
    with torch.no_grad():
        return _run(args)


def _run(args: argparse.Namespace) -> Profiled:
    try:
        target, tokenizer = load_target(args.target, args.device)
        drafter = DFlashDrafter.from_pretrained(args.draft).to(args.device).eval()
        traffic = read_traffic(args.traffic, tokenizer, args.on_bad_line, args.max_requests, args.max_tokens)
    except (TrafficError, TrainingInputError, OSError) as e:
        sys.exit(f"error: {e}")
    for message in traffic.skipped:
        print(f"skipped: {message}", file=sys.stderr)
    profile = resolve_profile(args, traffic)
    topk = int(profile.key.get("topk", args.topk))
    settings = settings_for(drafter.block_size, topk, profile.budgets)
    temperatures = [0.0] + ([args.temperature] if args.temperature > 0 else [])
    accepts = measure_accepts(target, drafter, traffic, settings, temperatures, tokenizer.eos_token_id, args.seed)
    return Profiled(traffic, profile, settings, topk, temperatures, accepts)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    out = args.out or Path(f"profile-{args.traffic.stem}-{datetime.date.today()}.md")
    print(report(args, run(args), out))
    print(f"wrote {out} and {out.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
