"""Cost model: seconds of a decode step's parts, by batch size and node budget, measured on this machine.

A step runs the draft pass (B positions per request; skipped when the budget
is 1, a plain decode step through the verify path) and the verify pass (n
nodes per request), plus the per-step work outside the worker (the
scheduler's, which plain decoding pays too). Both passes are profiled at
startup on dummy inputs (a few seconds, logged; cached in a JSON file keyed
by the models, device and settings). Every real step then refines the
prediction in two parts. A machine-speed factor shared by every cell follows
the ratio of each step's observed time to its prediction quickly (a moving
average over a few steps): a machine that slows down (other load, clocks)
shows in the frequent undrafted steps and is priced at once into the drafted
ones, which are seen rarely. Per cell (batch size, and budget for the verify
pass), the ratio of each pass's observed time to the profile's times the
speed (which also takes in the worker's own host work around the passes) is
kept as a running mean over a cell's first 1/ema steps, then an exponential
moving average: what the profile got wrong about that cell's shape. Between
profiled batch sizes the times are interpolated linearly, and extrapolated
linearly past the largest. The profile measures what the draft / don't-draft
decision needs at every batch size first (the draft pass and a one-node
verify), then larger budgets at growing batch sizes while its time lasts;
past the largest batch size a budget was measured at, its verify time is the
one-node time plus its extra tokens at the marginal cost per token measured
there. The outside work is learned from the period between back-to-back
steps (per batch-size cell, CPU only). The refinement is written back into
the cache file every controller log window, so a restarted server, and the
offline profiler (python -m sgl_dflash.profile), start from what real steps
measured; the controller's acceptance calibration (value_model) travels in
the same file.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

from sgl_dflash import ALGORITHM_NAME

logger = logging.getLogger(__name__)

# In the cache key: profiles of an older layout (before one-node verify and draft at every batch
# size first; before the speed factor, with online state learned without it; before the CPU's
# prepacked linear layers, sglang_patches; before shapes' first steps were left out of the online
# state, which could have learned their one-time costs) are measured again.
PROFILE_FORMAT = 5

# (batch size, tokens per request) -> seconds of one pass, measured
Timer = Callable[[int, int], float]


def batch_grid(max_bs: int) -> list[int]:
    """1, 2, 4, ... up to max_bs (included)."""
    grid = [1]
    while grid[-1] * 2 < max_bs:
        grid.append(grid[-1] * 2)
    return grid + ([max_bs] if max_bs > 1 else [])


def _interpolate(xs: list[int], ys: list[float], x: float) -> float:
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return max(y0 + (y1 - y0) * (x - x0) / (x1 - x0), 0.0)


class StepCostModel:
    def __init__(self, profile: dict, budgets: list[int], ema: float = 0.05, speed_rate: float = 0.2) -> None:
        """profile: {"batch_sizes": [...], "draft": [s per bs], "verify": {"n": [s per bs]}}."""
        self.profile = profile
        self.ema = ema
        self.speed_rate = speed_rate
        self.speed = 1.0  # the machine now relative to the cells' learned level; every cell's time scales with it
        self.batch_sizes: list[int] = profile["batch_sizes"]
        # budget -> (batch sizes, seconds) of its measured verify cells (a prefix of batch_sizes)
        self._measured = {
            int(n): tuple(map(list, zip(*[(b, s) for b, s in zip(self.batch_sizes, column) if s is not None])))
            for n, column in profile["verify"].items()
        }
        self.draft_correction = dict.fromkeys(self.batch_sizes, 1.0)
        self.verify_correction = {(bs, n): 1.0 for bs in self.batch_sizes for n in budgets}
        # per cell: seconds per step outside the worker (the scheduler's), learned online; None until seen
        self.overhead: dict[int, Optional[float]] = dict.fromkeys(self.batch_sizes)
        self.steps_observed = 0
        self._seen: Counter = Counter()  # observations per learned value
        self._warm: set[tuple[int, int]] = set()  # (batch size, budget) shapes this process has run
        self.cache: Optional[tuple[Path, dict]] = None  # (file, key) the profile came from, for save()
        # The acceptance calibration's counts (value_model), carried in the same file for the
        # controller: what real steps learned about this pair. Not read here.
        self.acceptance: dict = {}

    def cell(self, bs: int) -> int:
        """The profiled batch size closest to bs (in ratio)."""
        return min(self.batch_sizes, key=lambda b: abs(b - bs) / b)

    def _draft_prior(self, bs: int) -> float:
        return _interpolate(self.batch_sizes, self.profile["draft"], bs)

    def _verify_prior(self, bs: int, n: int) -> float:
        sizes, seconds = self._measured[n]
        if n == 1 or bs <= sizes[-1]:
            return _interpolate(sizes, seconds, bs)
        # Verify time grows with the tokens verified: n - 1 extra per request at the marginal cost
        # per token measured at the largest batch size this budget was profiled at.
        per_token = max(seconds[-1] - self._verify_prior(sizes[-1], 1), 0.0) / (sizes[-1] * (n - 1))
        return self._verify_prior(bs, 1) + per_token * bs * (n - 1)

    def draft_seconds(self, bs: int) -> float:
        return self._draft_prior(bs) * self.draft_correction[self.cell(bs)] * self.speed

    def verify_seconds(self, bs: int, n: int) -> float:
        """The verify pass and everything else of the step but the draft pass."""
        cell = self.cell(bs)
        return self._verify_prior(bs, n) * self.verify_correction[cell, n] * self.speed + self.overhead_seconds(bs)

    def overhead_seconds(self, bs: int) -> float:
        """The outside work at this batch size: its cell's, else the nearest learned cell's, else 0."""
        learned = [b for b, s in self.overhead.items() if s is not None]
        return self.overhead[min(learned, key=lambda b: abs(b - bs) / b)] if learned else 0.0

    def observed(self, bs: int, n: int) -> bool:
        """Whether a real step has taught the verify cell of (bs, n) (in this process or the cache)."""
        return self._seen["verify", self.cell(bs), n] > 0

    def step_seconds(self, bs: int, n: int) -> float:
        return self.verify_seconds(bs, n) + (self.draft_seconds(bs) if n > 1 else 0.0)

    def observe(self, bs: int, n: int, draft: float, verify: float) -> None:
        """One step's measured draft pass (0 when skipped) and the rest of its forward.

        A shape's first step in this process is not learned from: it pays one-time costs (oneDNN
        primitives and allocations for new row counts; several times a step at small batches),
        which, learned into a cell visited rarely and kept in the cache, priced drafting out.
        """
        if (bs, n) not in self._warm:
            self._warm.add((bs, n))
            return
        cell = self.cell(bs)
        self.steps_observed += 1
        draft_prior, verify_prior = self._draft_prior(bs), self._verify_prior(bs, n)
        predicted = verify_prior * self.verify_correction[cell, n]  # the cells alone, without the speed
        if draft > 0:
            predicted += draft_prior * self.draft_correction[cell]
        self.speed += self.speed_rate * ((draft + verify) / max(predicted, 1e-9) - self.speed)
        if draft > 0:
            ratio = draft / max(draft_prior * self.speed, 1e-9)
            self.draft_correction[cell] = self._blend(("draft", cell), self.draft_correction[cell], ratio)
        ratio = verify / max(verify_prior * self.speed, 1e-9)
        self.verify_correction[cell, n] = self._blend(("verify", cell, n), self.verify_correction[cell, n], ratio)

    def observe_overhead(self, bs: int, seconds: float) -> None:
        cell = self.cell(bs)
        self.overhead[cell] = self._blend(("overhead", cell), self.overhead[cell] or 0.0, seconds)

    def _blend(self, key: tuple, old: float, new: float) -> float:
        """Running mean over the first 1/ema observations (no slow start from the prior), then EMA."""
        self._seen[key] += 1
        return old + max(self.ema, 1.0 / self._seen[key]) * (new - old)

    # ------------------------------------------------------ online state

    def online_state(self) -> dict:
        """What real steps taught the model, as JSON (only the values some step has moved)."""
        return {
            "steps": self.steps_observed,
            "speed": self.speed,
            "overhead": {str(b): s for b, s in self.overhead.items() if self._seen["overhead", b]},
            "draft_correction": {str(b): c for b, c in self.draft_correction.items() if self._seen["draft", b]},
            "verify_correction": {
                f"{b}/{n}": c for (b, n), c in self.verify_correction.items() if self._seen["verify", b, n]
            },
        }

    def load_online_state(self, state: dict) -> None:
        """Resume a saved refinement (as settled: later steps move it at the EMA rate); entries for
        other batch sizes or budgets are ignored."""
        self.steps_observed = int(state.get("steps", 0))
        self.speed = float(state.get("speed", 1.0))
        settled = round(1.0 / self.ema)
        for b, s in state.get("overhead", {}).items():
            if int(b) in self.overhead:
                self.overhead[int(b)] = float(s)
                self._seen["overhead", int(b)] = settled
        for b, c in state.get("draft_correction", {}).items():
            if int(b) in self.draft_correction:
                self.draft_correction[int(b)] = float(c)
                self._seen["draft", int(b)] = settled
        for cell, c in state.get("verify_correction", {}).items():
            b, n = (int(x) for x in cell.split("/"))
            if (b, n) in self.verify_correction:
                self.verify_correction[b, n] = float(c)
                self._seen["verify", b, n] = settled

    def save(self) -> None:
        """Write the profile and the online state back to the cache file it came from (if any)."""
        if self.cache is None:
            return
        path, key = self.cache
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # servers sharing a cache never see half a file
        state = {"key": key, "profile": self.profile, "online": self.online_state(), "acceptance": self.acceptance}
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(path)

    # ------------------------------------------------------------- profiling

    @staticmethod
    def measure(draft: Timer, verify: Timer, budgets: list[int], max_bs: int, seconds: float) -> dict:
        """Time both passes within about `seconds`: every budget at batch size 1; the draft pass and
        a one-node verify at batch sizes 1, 2, 4, ... up to max_bs (at least two of them); then the
        other budgets at batch sizes 2, 4, ... while time is left (null where not measured).
        """
        start = time.perf_counter()

        def spent() -> float:
            return time.perf_counter() - start

        sizes: list[int] = []
        draft_s: list[float] = []
        verify_s: dict[str, list[Optional[float]]] = {str(n): [] for n in budgets}
        previous = 0.0  # seconds the last batch size took; the next one takes about twice that
        for bs in batch_grid(max_bs):
            if len(sizes) >= 2 and spent() + 2 * previous > seconds:
                break
            began = spent()
            sizes.append(bs)
            draft_s.append(_best_of(lambda: draft(bs, 0)))
            for n in budgets:
                measured = n == 1 or bs == 1
                verify_s[str(n)].append(_best_of(lambda: verify(bs, n)) if measured else None)
            previous = spent() - began
        for i, bs in enumerate(sizes[1:], start=1):
            for n in budgets[1:]:
                if spent() > seconds:
                    break
                verify_s[str(n)][i] = _best_of(lambda: verify(bs, n))
            if verify_s[str(budgets[-1])][i] is None:
                break  # a budget's measured batch sizes stay a prefix of `sizes`
        cells = sum(v is not None for column in verify_s.values() for v in column)
        logger.info(
            "%s cost profile: %d batch sizes (%s) x budgets %s (%d of %d verify cells measured) in %.1f s",
            ALGORITHM_NAME, len(sizes), sizes, budgets, cells, len(sizes) * len(budgets), spent(),
        )
        return {"batch_sizes": sizes, "draft": draft_s, "verify": verify_s}

    @classmethod
    def load_or_measure(
        cls, path: Path, key: dict, measure: Callable[[], dict], budgets: list[int]
    ) -> "StepCostModel":
        if path.is_file():
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                model = cls(cached["profile"], budgets)
                model.load_online_state(cached.get("online", {}))
                model.acceptance = cached.get("acceptance") or {}
                model.cache = (path, key)
                logger.info("%s cost profile loaded from %s (refined by %d real steps)",
                            ALGORITHM_NAME, path, model.steps_observed)
                return model
            logger.info("%s cost profile %s is for other settings; measuring again", ALGORITHM_NAME, path)
        model = cls(measure(), budgets)
        model.cache = (path, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save()
        logger.info("%s cost profile saved to %s", ALGORITHM_NAME, path)
        return model


def _best_of(run: Callable[[], float], repeats: int = 3) -> float:
    first = run()  # warm-up; a slow pass varies little, so it is repeated once
    return min(run() for _ in range(repeats if first < 0.25 else 1))


def default_profile_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "sgl_dflash" / "profiles" / f"{digest}.json"
