"""bench/schedule.py: the order of servers and levels in bench/compare.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("schedule", Path(__file__).resolve().parent.parent / "bench" / "schedule.py")
schedule = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(schedule)

MODES = ["plain", "adaptive", "plain again", "DFLASH", "tree"]


def test_one_at_a_time_rotates_the_servers_by_round():
    for r in range(7):
        assert schedule.round_groups(MODES, 1, r) == [[m] for m in MODES[r % 5:] + MODES[: r % 5]]


def test_groups_keep_the_modes_order_and_rotate_by_round():
    assert schedule.groups(MODES, 3) == [["plain", "adaptive", "plain again"], ["DFLASH", "tree"]]
    assert schedule.round_groups(MODES, 3, 1) == [["DFLASH", "tree"], ["plain", "adaptive", "plain again"]]
    assert schedule.groups(MODES, 8) == [MODES]


def test_every_server_of_a_group_goes_first_equally_often():
    group = ["plain", "adaptive", "plain again"]
    for r in range(3):
        orders = [schedule.level_order(group, r, i) for i in range(6)]
        assert all(sorted(order) == sorted(group) for order in orders)
        firsts = [order[0] for order in orders]
        assert all(firsts.count(m) == 2 for m in group)
    # Rounds start the same level on different servers.
    assert len({schedule.level_order(group, r, 0)[0] for r in range(3)}) == 3


def test_side_by_side_means_one_group():
    assert schedule.side_by_side(MODES, 3, "adaptive", "plain")
    assert schedule.side_by_side(MODES, 3, "tree", "DFLASH")
    assert not schedule.side_by_side(MODES, 3, "tree", "plain")
    assert not schedule.side_by_side(MODES, 1, "adaptive", "plain")
