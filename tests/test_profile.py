"""The offline profiler (python -m sgl_dflash.profile): reads traffic, measures accept lengths, predicts.

End to end on the hand-set ``branchy`` pair, whose trees and accepted paths can be worked out by
hand (below), and on a cost profile whose step times are simple numbers: the report's accept
lengths, histograms and predictions are checked against those hand computations, not against the
reference decoder or cost model the profiler itself calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgl_dflash import profile as profiler
from sgl_dflash.cost_profile import ProfileError, load_profile
from sgl_dflash.traffic import TrafficError, read_traffic
from sgl_dflash.training.dflash_trainer import load_target
from sgl_dflash.training.drafter import DFlashDrafter

ASSETS = Path(profiler.__file__).parent / "assets"
TARGET, DRAFT = ASSETS / "tiny-target", ASSETS / "tiny-draft"
MAX_TOKENS = 9

# The branchy pair (sgl_dflash/tiny_models.py), block B = 4. Its target continues a -> b, b -> a,
# any other byte -> a (greedy, whatever came before); its drafter ranks a first (p ~0.4-0.5) and b
# second (p ~0.3) at every masked position. The profiler's settings for a top-2 profile with
# budgets 1, 4, 8: the chain of the block, trees K=2 of N=4 and N=8 nodes (root included),
# best-first by path probability:
#   N=4: a, b, aa                      (b .3 beats aa .16-.25)
#   N=8: a, b, aa, ab, ba, aaa, bb     (aab, aba, baa, ... are below .09)
# Each request's first token comes from the prompt (prefill); the step from bonus t walks the
# target's continuation of t through the tree:
# * prompts ending in another byte: first token a.
#   chain: from a the target says b, the draft a: 0 accepted, bonus b; from b: a accepted, then b
#     is not the draft: 1 accepted, bonus b, and so on: out = 1 + 1 + 2 + 2 + ... tokens, so
#     9 tokens take 5 steps [0, 1, 1, 1, 1]: tau 1.8
#   N=4: from a: b accepted, b has no child: 1, bonus a: 4 steps [1, 1, 1, 1]: tau 2.0
#   N=8: from a: b, ba accepted, ba has no child: 2, bonus b; from b: a, ab: 2, bonus a:
#     3 steps [2, 2, 2]: tau 3.0
# * prompts ending in "a": first token b.
#   chain: from b: a accepted, then b is not the draft: 1, bonus b: 4 steps [1, 1, 1, 1]: tau 2.0
#   N=4: from b: a accepted, a's only child is a: 1, bonus b: tau 2.0
#   N=8: as above from b: tau 3.0
PROMPTS = {"other": ["xyz", "hello world", "2 + 2 = "], "ends in a": ["pizza", "banana"]}
ACCEPTED = {  # category -> setting label -> accepted drafts of each step of one request
    "other": {"chain N=4": [0, 1, 1, 1, 1], "tree K=2 N=4": [1, 1, 1, 1], "tree K=2 N=8": [2, 2, 2]},
    "ends in a": {"chain N=4": [1, 1, 1, 1], "tree K=2 N=4": [1, 1, 1, 1], "tree K=2 N=8": [2, 2, 2]},
}
# Seconds per step by batch size (1, 4): verify n nodes, and the draft pass (budgets > 1 only).
DRAFT_S = {1: 0.01, 4: 0.02}
VERIFY_S = {1: {1: 0.04, 4: 0.05}, 4: {1: 0.05, 4: 0.09}, 8: {1: 0.06, 4: 0.2}}


@pytest.fixture(scope="module")
def models():
    target, tokenizer = load_target(TARGET, "cpu")
    return target, tokenizer, DFlashDrafter.from_pretrained(DRAFT).eval()


def write_profile(path: Path, verify: dict, draft: dict, topk: int) -> Path:
    """A cost profile in the format the server writes."""
    sizes = sorted(draft)
    profile = {"batch_sizes": sizes, "draft": [draft[b] for b in sizes],
               "verify": {str(n): [by_bs[b] for b in sizes] for n, by_bs in verify.items()}}
    path.write_text(json.dumps({"key": {"topk": topk, "device": "test"}, "profile": profile}))
    return path


@pytest.fixture
def profile_file(tmp_path) -> Path:
    return write_profile(tmp_path / "profile.json", VERIFY_S, DRAFT_S, topk=2)


def write_traffic(path: Path, tokenizer, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def table(text: str, heading: str) -> dict[str, list[str]]:
    """The markdown table under the heading: first cells (joined by " / " when the first two name
    a row) -> the remaining cells."""
    lines = text.split(heading)[1].split("\n\n")[1].splitlines()[2:]
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = rows.get(cells[0], []) + [cells[1:]]
    return rows


def test_report_on_the_branchy_pair_equals_hand_computed_values(tiny_pair, tmp_path, profile_file):
    target_path, draft_path = tiny_pair("branchy")
    rows = [{"prompt": p, "category": c, "max_tokens": MAX_TOKENS} for c, ps in PROMPTS.items() for p in ps]
    traffic = write_traffic(tmp_path / "traffic.jsonl", None, rows)
    out = tmp_path / "report.md"
    profiler.main(["--target", str(target_path), "--draft", str(draft_path), "--traffic", str(traffic),
                   "--profile", str(profile_file), "--concurrency", "1,4", "--out", str(out)])
    text = out.read_text()
    assert out.with_suffix(".png").stat().st_size > 0
    assert str(profile_file) in text and "given with --profile" in text

    settings = list(ACCEPTED["other"])
    header = text.split("## Accept length, greedy")[1].split("\n\n")[1].splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == ["category", *settings]
    taus = {c: {s: 1 + sum(a) / len(a) for s, a in by_setting.items()} for c, by_setting in ACCEPTED.items()}
    accept = table(text, "## Accept length, greedy")
    for category, by_setting in taus.items():
        assert accept[category] == [[f"{by_setting[s]:.2f}" for s in settings]]

    # Histograms of the chain and the widest tree: share of steps committing t = accepted + 1 tokens.
    histogram = table(text, "Accept-length histogram (greedy")
    for category in PROMPTS:
        got = {row[0]: row[1:] for row in histogram[category]}
        for setting in ("chain N=4", "tree K=2 N=8"):
            steps = ACCEPTED[category][setting]
            assert got[setting] == [f"{steps.count(t - 1) / len(steps):.0%}" for t in (1, 2, 3)]

    # tokens/s at concurrency c and budget n = c x tau(n) / (verify + draft seconds), tau(1) = 1.
    predicted = table(text, "## Predicted output tokens/s on this machine, greedy")
    budget_taus = {c: {1: 1.0, 4: t["tree K=2 N=4"], 8: t["tree K=2 N=8"]} for c, t in taus.items()}
    budget_taus[profiler.ALL_TRAFFIC] = budget_taus["other"]  # the two categories' trees agree
    for group, tau in budget_taus.items():
        for c in (1, 4):
            rates = {n: c * tau[n] / (VERIFY_S[n][c] + (DRAFT_S[c] if n > 1 else 0.0)) for n in tau}
            best = max(rates, key=rates.get)
            pick = "no speculation" if best == 1 else f"N={best}"
            expected = [str(c), f"{rates[1]:.1f}", f"{rates[4]:.1f}", f"{rates[8]:.1f}", pick,
                        f"{rates[best] / rates[1]:.2f}x"]
            assert expected in predicted[group], (group, c)
    # On these numbers the pick changes with concurrency: a tree alone, no speculation at 4.
    assert [row[-2] for row in predicted["other"]] == ["N=8", "no speculation"]


def test_messages_use_the_chat_template(models, tmp_path):
    _, tokenizer, _ = models
    messages = [{"role": "user", "content": "def add(a, b):"}]
    path = write_traffic(tmp_path / "chat.jsonl", tokenizer, [{"messages": messages, "model": "x"}])
    (req,) = read_traffic(path, tokenizer).requests
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert req.prompt_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert req.category == "all" and req.max_tokens == 128


def test_malformed_lines_stop_or_skip_with_line_numbers(models, tmp_path, profile_file, capsys):
    _, tokenizer, _ = models
    rows = ['{"prompt": "import os\\n"}', "{not json", '{"category": "code"}', "",
            '{"prompt": "x = 1", "max_tokens": 0}', '{"prompt": "print(1)", "max_tokens": 4}']
    path = write_traffic(tmp_path / "bad.jsonl", tokenizer, rows)

    with pytest.raises(TrafficError, match=r"line 2: not valid JSON"):
        read_traffic(path, tokenizer)
    with pytest.raises(SystemExit, match=r"bad.jsonl line 2: not valid JSON"):  # the CLI's default: stop
        profiler.main(["--target", str(TARGET), "--draft", str(DRAFT), "--traffic", str(path),
                       "--profile", str(profile_file)])

    traffic = read_traffic(path, tokenizer, on_bad_line="skip")
    assert [r.line for r in traffic.requests] == [1, 6]
    assert [m.split(": ", 1)[0] for m in traffic.skipped] == [f"{path} line {n}" for n in (2, 3, 5)]
    assert "exactly one of" in traffic.skipped[1] and "max_tokens" in traffic.skipped[2]


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error(models, tmp_path, content):
    _, tokenizer, _ = models
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(TrafficError, match="no requests"):
        read_traffic(path, tokenizer)


def test_a_file_that_is_not_a_profile_is_refused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"key": {}, "profile": {"batch_sizes": [1]}}))
    with pytest.raises(ProfileError, match="as an SGL_DFLASH server"):
        load_profile(path)
