"""The offline profiler (python -m sgl_dflash.profile) on the shipped pair: reads traffic, measures, predicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgl_dflash import profile as profiler
from sgl_dflash.cost_profile import ProfileError, load_profile, predict
from sgl_dflash.traffic import TrafficError, read_traffic
from sgl_dflash.training.corpus import heldout_prompts
from sgl_dflash.training.dflash_trainer import load_target
from sgl_dflash.training.drafter import DFlashDrafter
from sgl_dflash.training.reference_decoder import dflash_proposer, speculative_decode

ASSETS = Path(profiler.__file__).parent / "assets"
TARGET, DRAFT = ASSETS / "tiny-target", ASSETS / "tiny-draft"
PROSE = [
    "The weather was mild, and the market square filled with people long before noon.",
    "She folded the letter twice, put it in her coat pocket, and walked to the station.",
    "Most of the old houses on this street were built before the river changed its course.",
]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def models():
    target, tokenizer = load_target(TARGET, "cpu")
    return target, tokenizer, DFlashDrafter.from_pretrained(DRAFT).eval()


@pytest.fixture
def profile_file(tmp_path) -> Path:
    """A cost profile in the format the server writes (verify slower per node, draft ~1/4 of verify)."""
    sizes = [1, 2, 4]
    profile = {
        "batch_sizes": sizes,
        "draft": [0.002 * b for b in sizes],
        "verify": {str(n): [0.008 * b * (1 + n / 8) for b in sizes] for n in (1, 4, 16)},
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"key": {"topk": 4, "device": "test"}, "profile": profile}))
    return path


def write_traffic(path: Path, tokenizer, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def two_categories(tokenizer) -> list[dict]:
    code = [tokenizer.decode(ids) for ids in heldout_prompts(tokenizer, 3, 48, seed=5)]
    return [{"prompt": p, "category": "code", "max_tokens": MAX_TOKENS} for p in code] + [
        {"prompt": p, "category": "prose", "max_tokens": MAX_TOKENS} for p in PROSE
    ]


def test_end_to_end_accept_lengths_equal_the_reference_decoder(models, tmp_path, profile_file):
    target, tokenizer, drafter = models
    traffic = write_traffic(tmp_path / "traffic.jsonl", tokenizer, two_categories(tokenizer))
    out = tmp_path / "report.md"
    profiler.main(["--target", str(TARGET), "--draft", str(DRAFT), "--traffic", str(traffic),
                   "--profile", str(profile_file), "--concurrency", "1,4", "--out", str(out)])
    text = out.read_text()
    assert out.with_suffix(".png").stat().st_size > 0
    assert str(profile_file) in text and "given with --profile" in text

    settings = [profiler.Setting(1, 16), profiler.Setting(4, 4), profiler.Setting(4, 16)]
    table = text.split("## Accept length, greedy")[1].split("\n\n")[1].splitlines()[2:]
    rows = {line.split("|")[1].strip(): line for line in table}
    parsed = read_traffic(traffic, tokenizer)
    for category, requests in parsed.categories().items():
        expected = []
        for s in settings:  # the reference decoder, run directly
            accepted: list[int] = []
            for req in requests:
                accepted += speculative_decode(target, dflash_proposer(target, drafter, s.topk), req.prompt_ids,
                                               MAX_TOKENS, 16, tokenizer.eos_token_id, num_nodes=s.nodes)[1]
            expected.append(f"{1 + sum(accepted) / len(accepted):.2f}")
        assert rows[category] == f"| {category} | " + " | ".join(expected) + " |"

    # the predictions are the cost model's: concurrency x tau / step seconds, the best budget picked
    costs = load_profile(profile_file).cost_model()
    code_tau = {1: 1.0, 4: float(rows["code"].split("|")[3]), 16: float(rows["code"].split("|")[4])}
    expected = predict(costs, code_tau, 4)
    line = next(l for l in text.splitlines() if l.startswith("| code | 4 |"))
    assert f"| {expected.speedup:.2f}x |" in line
    assert ("no speculation" if expected.choice == 1 else f"N={expected.choice}") in line


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
