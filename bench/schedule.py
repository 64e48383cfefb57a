"""The order in which bench/compare.py runs its servers and levels.

Modes run in groups of ``together`` servers that are up at once (in the
order given). Each round starts the groups afresh, the groups' order rotated
by the round; within a group every level runs on each server in turn, the
order rotated by round and level, so each mode goes first equally often and
drift in the machine's speed meets the group's modes alike. With
``together`` 1 this is one server at a time, the servers' order rotated by
the round.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar("T")


def rotated(items: Sequence[T], k: int) -> list[T]:
    k %= len(items)
    return [*items[k:], *items[:k]]


def groups(modes: Sequence[T], together: int) -> list[list[T]]:
    """The modes in consecutive groups of ``together`` (the last may be smaller)."""
    return [list(modes[i:i + together]) for i in range(0, len(modes), together)]


def round_groups(modes: Sequence[T], together: int, round_index: int) -> list[list[T]]:
    """The groups in the order one round starts them."""
    return rotated(groups(modes, together), round_index)


def level_order(group: Sequence[T], round_index: int, level_index: int) -> list[T]:
    """The order in which one level runs on a group's servers."""
    return rotated(group, round_index + level_index)


def side_by_side(modes: Sequence[T], together: int, a: T, b: T) -> bool:
    """Whether a and b are up at once (one group): their runs of a level and round are minutes apart."""
    return any(a in group and b in group for group in groups(modes, together))
