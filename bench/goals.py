"""The adaptive controller's goals (issue 11), judged from one benchmark run's median tok/s.

Terms, all ratios of medians over rounds of the same run:
- noise band: how far apart two servers of one configuration measure. The run
  starts plain decoding twice per round (the reference and a control, each a
  server of its own, in the rotation); the band is the largest |1 - control /
  reference| over the run's concurrencies. A gap smaller than the band is not
  a measured gap.
- best fixed: the fastest speculative mode at that concurrency that is not
  adaptive (built-in DFLASH included).
- paired ratio (reported beside the goals, not judged): for two servers up
  at once (bench/compare.py --together), the median over rounds of the ratio
  of their tok/s at the same level and round, with its min-max; the drift of
  the machine between rounds cancels out of it.

Goals: adaptive >= plain within the noise band at every concurrency;
adaptive >= 0.95x the best fixed at every concurrency; >= 1.5x plain at
concurrency 1; >= 1.2x built-in DFLASH wherever DFLASH is slower than plain.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

Medians = dict[tuple[str, int], float]  # (mode label, concurrency) -> median output tok/s

BEST_FIXED_SHARE = 0.95
AT_ONE_REQUEST = 1.5
OVER_DFLASH = 1.2


@dataclass(frozen=True)
class Goal:
    concurrency: int
    goal: str  # what is compared, in words
    measured: float  # the ratio measured
    threshold: float  # the ratio the goal asks for
    note: str = ""  # e.g. which fixed mode was best

    @property
    def met(self) -> bool:
        return self.measured >= self.threshold


def noise_band(med: Medians, plain: str, control: str, levels: list[int]) -> float:
    """The largest |1 - control / plain| over the levels."""
    return max(abs(1.0 - med[control, c] / med[plain, c]) for c in levels)


def median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def paired_ratio(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Median, min and max over rounds of num / den (both in round order)."""
    if len(num) != len(den) or not num:
        raise ValueError(f"paired ratio needs the same rounds on both sides, got {len(num)} and {len(den)}")
    return median_range([n / d for n, d in zip(num, den)])


def judge(med: Medians, levels: list[int], plain: str, adaptive: str, fixed: list[str],
          dflash: Optional[str], band: float) -> list[Goal]:
    """Every goal that applies at every level, in level order."""
    goals = []
    for c in levels:
        vs_plain = med[adaptive, c] / med[plain, c]
        goals.append(Goal(c, f"vs plain (>= 1 - noise band {band:.2f})", vs_plain, 1.0 - band))
        if fixed:
            best = max(fixed, key=lambda label: med[label, c])
            goals.append(Goal(c, f"vs best fixed (>= {BEST_FIXED_SHARE})", med[adaptive, c] / med[best, c],
                              BEST_FIXED_SHARE, best))
        if c == 1:
            goals.append(Goal(c, f"vs plain at 1 request (>= {AT_ONE_REQUEST})", vs_plain, AT_ONE_REQUEST))
        if dflash is not None and med[dflash, c] < med[plain, c]:
            goals.append(Goal(c, f"vs built-in DFLASH where it is slower than plain (>= {OVER_DFLASH})",
                              med[adaptive, c] / med[dflash, c], OVER_DFLASH,
                              f"DFLASH {med[dflash, c] / med[plain, c]:.2f}x plain"))
    return goals


def goal_lines(goals: list[Goal], adaptive: str, band: float, control: Optional[str]) -> list[str]:
    """The goals as a markdown section."""
    if control is None:
        source = "no control server in this run (add a second plain mode, e.g. `plain again`): band taken as 0"
    else:
        source = f"`{control}` vs `plain`, the largest gap over the run's concurrencies"
    lines = [
        f"Goals of `{adaptive}` (ratios of medians; noise band {band:.2f}: {source}); "
        f"met {sum(g.met for g in goals)} of {len(goals)}:",
        "",
        "| concurrency | goal | measured | met | note |",
        "|---:|---|---:|---|---|",
    ]
    lines += [f"| {g.concurrency} | {g.goal} | {g.measured:.2f}x | {'met' if g.met else 'NOT met'} | {g.note} |"
              for g in goals]
    return lines
