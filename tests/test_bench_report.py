"""bench/compare.py --report-from: a run's report written again from its work folder, nothing run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # compare.py imports its siblings as top-level modules
import compare  # noqa: E402


def _result(tok_s: float, texts: list[str]) -> dict:
    return {"output_throughput": tok_s, "accept_length": 2.5 if tok_s > 10 else None, "completed": len(texts),
            "generated_texts": texts, **dict.fromkeys(compare.LATENCY, 10.0)}


def run_compare(monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["compare.py", *argv])
    compare.main()


def test_report_from_a_work_folder_uses_the_rounds_that_completed(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    argv = ["--pair", "tiny", "--modes", "plain,SGL_DFLASH", "--concurrency", "1,2", "--rounds", "2",
            "--together", "2", "--max-tokens", "4", "--step-timing"]
    (work / "run.json").write_text(json.dumps({"argv": argv, "date": "2026-01-02"}))
    (work / "heldout.jsonl").write_text("")
    tok_s = {("plain", 1): 10.0, ("SGL_DFLASH", 1): 15.0, ("plain", 2): 20.0, ("SGL_DFLASH", 2): 25.0}
    for (mode, c), value in tok_s.items():
        texts = ["a", "b"] if mode == "plain" else ["a", "x"]  # one of two outputs differs from plain
        (work / f"{mode}-r0-c{c}.jsonl").write_text(json.dumps(_result(value, texts)) + "\n")
    (work / "SGL_DFLASH-r0-c1.timing.json").write_text(json.dumps([[1.0, 2.0, 3.0, 1.0]]))
    (work / "plain-r1-c1.jsonl").write_text(json.dumps(_result(99.0, ["a", "b"])) + "\n")  # round 2 cut short

    out = tmp_path / "report.md"
    run_compare(monkeypatch, "--report-from", str(work), "--out", str(out))
    text = out.read_text()
    assert "1 of 2 rounds completed" in capsys.readouterr().out
    assert text.startswith("# Serving benchmark (tiny pair, cpu), 2026-01-02")
    assert f"--report-from {work}" in text
    assert "| 1 | SGL_DFLASH | 15.0 [15.0-15.0] | 1.50x | - | 2.50 | 1/2 |" in text
    assert "| SGL_DFLASH / plain | 1.50 [1.50-1.50] | 1.25 [1.25-1.25] |" in text  # paired by round
    assert "| 1 | SGL_DFLASH | 1.00 | 2.00 | 3.00 | 1.0 | 1 |" in text  # the step-timing lines kept
    assert out.with_suffix(".png").is_file()


def test_report_from_refuses_a_folder_that_is_not_a_run(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="not a compare.py work folder"):
        run_compare(monkeypatch, "--report-from", str(tmp_path))
