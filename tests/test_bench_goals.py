"""bench/goals.py judges the controller's goals from a run's medians as the issue states them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("goals", Path(__file__).resolve().parent.parent / "bench" / "goals.py")
goals = sys.modules["goals"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(goals)

LEVELS = [1, 8]
MED = {
    ("plain", 1): 10.0, ("plain again", 1): 10.4, ("DFLASH", 1): 12.0, ("tree", 1): 14.0, ("adaptive", 1): 14.0,
    ("plain", 8): 40.0, ("plain again", 8): 39.0, ("DFLASH", 8): 20.0, ("tree", 8): 30.0, ("adaptive", 8): 38.8,
}


def test_noise_band_is_the_largest_gap_between_the_two_plain_servers():
    assert abs(goals.noise_band(MED, "plain", "plain again", LEVELS) - 0.04) < 1e-12


def test_every_goal_that_applies_is_judged_at_its_level():
    found = goals.judge(MED, LEVELS, "plain", "adaptive", ["DFLASH", "tree"], "DFLASH", band=0.04)
    by_level = {(g.concurrency, g.goal.split(" (")[0]): g for g in found}
    assert sorted(by_level) == [
        (1, "vs best fixed"), (1, "vs plain"), (1, "vs plain at 1 request"),
        (8, "vs best fixed"), (8, "vs built-in DFLASH where it is slower than plain"), (8, "vs plain"),
    ]  # DFLASH beats plain at 1 request: its goal does not apply there
    assert by_level[1, "vs plain at 1 request"].measured == 1.4 and not by_level[1, "vs plain at 1 request"].met
    assert by_level[1, "vs best fixed"].note == "tree" and by_level[1, "vs best fixed"].met
    assert by_level[8, "vs plain"].met  # 0.97x plain, inside the 0.04 band
    narrow = goals.judge(MED, LEVELS, "plain", "adaptive", [], None, band=0.02)
    assert [g.met for g in narrow if g.concurrency == 8] == [False]  # ... not a 0.02 one
    assert by_level[8, "vs built-in DFLASH where it is slower than plain"].measured == 38.8 / 20.0


def test_the_section_counts_what_was_met_and_says_when_no_control_ran():
    found = goals.judge(MED, LEVELS, "plain", "adaptive", ["tree"], None, band=0.0)
    lines = goals.goal_lines(found, "adaptive", 0.0, None)
    assert f"met {sum(g.met for g in found)} of {len(found)}" in lines[0] and "no control server" in lines[0]
    assert len(lines) == 4 + len(found) and sum("NOT met" in line for line in lines) == 2


def test_paired_ratio_pairs_rounds_not_medians():
    # Both servers slow down by half in round 2: each round's ratio is still 1.25.
    mid, lo, hi = goals.paired_ratio([12.5, 6.25, 13.75], [10.0, 5.0, 11.0])
    assert (mid, lo, hi) == (1.25, 1.25, 1.25)
    mid, lo, hi = goals.paired_ratio([12.0, 9.0], [10.0, 10.0])
    assert (round(mid, 12), lo, hi) == (1.05, 0.9, 1.2)
    with pytest.raises(ValueError, match="same rounds"):
        goals.paired_ratio([1.0], [1.0, 2.0])
