"""Controller: each step's node budget, the one with the most expected committed tokens per second.

The value of a budget n for the batch is

    V(n) = sum over requests of e_r(n),   e_r(n) = 1 + f_r * (E_r(n) - 1)

with E_r the request's expected commits for a tree of n nodes (value_model)
and f_r how its drafts have really fared against such predictions (a running
ratio of accepted to expected drafts: requests whose drafts keep failing
count for less). Budgets are per batch: the verify pass takes the same node
count from every request. The decision has two stages:

1. Before drafting: draft or not. Not drafting (budget 1) is a plain decode
   step. Drafting pays if some budget's V(n) / (draft + verify seconds)
   beats V(1) / (verify seconds of 1 node) by ``margin`` (from two requests
   up); V comes from each request's running curve (a running mean over its
   drafted steps, starting from the mean over requests' drafted steps: a
   running mean weighed by requests, from an optimistic prior worth a few,
   remembering ~64; with one request at a time, a mean that followed the
   last few steps, or that a first measurement replaced, handed one poor
   request's curve (the server's warm-up request's, at startup) to the next
   ones, and they did not draft). The margin is there because drafting loses
   more than its steps show: requests that speculate finish at different
   steps, so a batch that drafts ends in a tail of small batches, where
   plain decoding's batch stays whole (measured at 16 requests: drafting at
   a predicted tie ran 0.75x plain). A budget also must not slow the batch's
   slowest request (its fewest expected commits per second) by more than
   ``slowest_loss``: a burst of requests ends when its last one does, and
   the requests a drafter serves worst are those that last (measured at 8
   requests: drafting steps cost 3.3 plain ones, the batch's mean commits
   3.9 tokens a step, its five slowest 2.5, and the batch ran 0.77x plain).
   k requests not drafted yet count as the expected slowest of k requests
   drawn from the last finished ones (their expected commits as the
   controller valued them when they finished, trust applied): with the mean
   of all requests instead, every burst's first step drafted (at 16
   requests: one step costing three plain ones). The exact expected minimum
   replaced a 1/(k+1) quantile, which prices one new request at the
   finished requests' median, below their mean when a few requests draft
   very well and many poorly. (Not the first curves of requests before
   them: priced from those, new requests at two requests never drafted, so
   they never became known.)
   Hysteresis: drafting starts again only when it is predicted better by the
   margin and ``hysteresis`` on top.
   Evidence decays: an undrafted step moves its requests' own evidence
   (running curve, accepted / expected drafts) ``decay`` of the way back to
   the mean of all requests. Without it a request that stopped drafting on a
   poor start never drafted again (one request at a time, measured: requests
   the N=8 tree served at 2.3-2.5 tokens a step ran 22-31 undrafted steps;
   decay 0.5 ran 1.2x decay 0.05 at one request). A retry's measurement
   replaces the stale curve, as a first one does (blended into it, a request
   that stayed poor was retried every other step). A retry after which
   drafting would not start again for the request alone (past the margin
   and the hysteresis) halves its decay, so a request that stays poor, or a
   batch that one poor request holds off, is retried ever more rarely; one
   after which it would restores it.
   While drafting, a batch size whose undrafted step this process (or the
   cached profile) has never timed gets undrafted steps until it has: the
   profile prices that step on dummy requests, and while drafting stays on
   no real step would correct it. While it is off, one step now and then
   drafts anyway, so the estimates stay fresh (and a mispriced cost cell
   gets corrected: only real steps correct it). Such an exploration waits
   for ``explore_every`` undrafted steps in a row, doubled after each
   exploration that leaves speculation off (up to ``explore_max``), and for
   enough undrafted time that its predicted extra cost (a draft pass and the
   smallest tree) is at most ``explore_share`` of it: an exploring step at
   64 requests costs ~3 undrafted ones, at one request a fraction of one.
   Both waits are finite, so exploration never stops, however the cost model
   prices drafting.
2. After drafting (``use_step_confidence``): the draft pass is paid; this
   step's own trees give E_r(n) for every budget at once (a budget's tree is
   the first n nodes of the full one), and the budget maximizing
   V(n) - r * (verify seconds of n nodes) is verified, r being the best rate
   these trees promise for whole steps (tokens per second, draft pass
   included; a plain step's if drafting does not pay). The draft pass is
   paid this step but again on every later one, so a token committed now
   saves 1/r seconds later; maximizing V(n) over the verify seconds alone
   valued it at this step's cheaper rate and chose small trees (at one
   request, 4 nodes where the fixed 8-node tree ran 1.07x faster).
   Stage 2 also checks stage 1: on a step that starts drafting again or
   explores, or drafts for requests that have not drafted yet, from two
   requests up, the drafting rate this step's trees promise over the one
   stage 1 forecast feeds a running ratio per batch-size cell, which scales
   stage 1's forecast on such steps in that cell. Running curves decayed
   toward the mean of all requests, and new requests valued at it,
   forecast more than the batch's own trees showed at 8 requests (measured:
   1-4 drafted steps in a wave of 8 whose second stage verified the root
   alone; a server that never drafts ran 1.07-1.12x as fast); explorations
   keep the ratio current. New requests while drafting count too: with
   the check on restarts only, each wave of 8 arriving after one request
   that drafted spent two draft passes that stage 2 refuted (5 of 5
   rounds), the first unchecked as speculation was still on.
   This is where the drafter's confidence in this very step decides. On GPU
   it reads a few numbers back from the device mid-step; without it the
   running curves decide.

Seconds come from the cost model (measured on this machine, refined by every
step). Statistics go to the host without blocking the device and are folded
in when they have arrived (immediately on CPU).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from sgl_dflash import ALGORITHM_NAME
from sgl_dflash.cost_model import StepCostModel
from sgl_dflash.value_model import AcceptanceCalibration

logger = logging.getLogger(__name__)

CURVE_RATE = 0.3  # a request's running curve: its last few drafted steps
# The mean curve new requests start from is a running mean over requests' drafted steps, starting
# from an optimistic prior worth MEAN_PRIOR of them and remembering about MEAN_MEMORY.
MEAN_PRIOR = 4.0
MEAN_MEMORY = 64.0
# The slowest of k new requests is priced from the last FINISHED_KEPT finished requests' expected
# commits, once there are FINISHED_NEEDED of them.
FINISHED_KEPT = 64
FINISHED_NEEDED = 4
# Stage 1's forecast bias per batch-size cell: a running ratio (this rate) of stage 2's drafting
# rate to stage 1's, kept within these bounds.
FORECAST_RATE = 0.3
FORECAST_BOUNDS = (0.25, 2.0)


@dataclass(frozen=True)
class ControllerConfig:
    """Knobs of ``--speculative-adaptive-config`` (a JSON file), all optional."""

    budgets: tuple[int, ...] = ()  # candidate node budgets; default: 1 and powers of two up to N
    margin: float = 0.05  # from two requests up, drafting must be predicted this much faster than plain decoding
    slowest_loss: float = 0.05  # ... and must not slow the batch's slowest request by more than this (1: no guard)
    hysteresis: float = 0.05  # ... and this much more to start again once off
    decay: float = 0.5  # per undrafted step, a request's own evidence moves this far back to the mean (0: never)
    explore_every: int = 16  # undrafted steps in a row before one drafted step (0: never)
    explore_max: int = 256  # the interval doubles after each exploration that keeps speculation off
    explore_share: float = 0.02  # exploring steps' predicted extra time, at most this share of undrafted time
    use_step_confidence: Optional[bool] = None  # stage 2; default: on for CPU, off for GPU
    profile_path: Optional[str] = None  # cost profile cache; default under ~/.cache/sgl_dflash
    profile_seconds: float = 20.0  # time the startup profile may take
    profile_context: int = 256  # prefix length of the profile's dummy requests
    log_every: int = 64  # steps between controller log lines
    policy: str = "rate"  # "rate"; "cycle" rotates the budgets every step (tests exactness under switching)

    @classmethod
    def from_json(cls, text: Optional[str], node_budget: int) -> "ControllerConfig":
        raw = json.loads(text) if text else {}
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"--speculative-adaptive-config: unknown keys {sorted(unknown)}; "
                f"known: {sorted(cls.__dataclass_fields__)}"
            )
        budgets = tuple(raw.pop("budgets", ())) or default_budgets(node_budget)
        if any(not isinstance(n, int) or not 1 <= n <= node_budget for n in budgets) or 1 not in budgets:
            raise ValueError(
                f"--speculative-adaptive-config budgets {list(budgets)} must be integers in "
                f"1..{node_budget} (--speculative-num-draft-tokens) and include 1 (no speculation)."
            )
        config = cls(budgets=tuple(sorted(set(budgets))), **raw)
        if config.margin < 0.0 or config.hysteresis < 0.0:
            raise ValueError("--speculative-adaptive-config margin and hysteresis must be >= 0.")
        if not 0.0 <= config.slowest_loss <= 1.0:
            raise ValueError(f"--speculative-adaptive-config slowest_loss must be in [0, 1], got {config.slowest_loss}.")
        if not 0.0 <= config.decay <= 1.0:
            raise ValueError(f"--speculative-adaptive-config decay must be in [0, 1], got {config.decay}.")
        if not 0.0 < config.explore_share <= 1.0:
            raise ValueError(f"--speculative-adaptive-config explore_share must be in (0, 1], got {config.explore_share}.")
        if config.policy not in ("rate", "cycle"):
            raise ValueError(
                f"--speculative-adaptive-config policy must be 'rate' or 'cycle', got {config.policy!r}."
            )
        return config


def expected_min(samples: torch.Tensor, k: int) -> torch.Tensor:
    """[cols]: the expected minimum of k draws (with replacement) from each column of samples
    [m, cols]; the mean for k = 1. The sorted i-th of m (from 0) is the minimum with probability
    ((m - i) / m)^k - ((m - i - 1) / m)^k."""
    m = samples.shape[0]
    survive = ((m - torch.arange(m + 1, dtype=torch.float64)) / m) ** k  # P(min >= i-th smallest)
    return ((survive[:-1] - survive[1:])[:, None] * samples.double().sort(dim=0).values).sum(dim=0)


def default_budgets(node_budget: int) -> tuple[int, ...]:
    budgets, n = {1, node_budget}, 2
    while n < node_budget:
        budgets.add(n)
        n *= 2
    return tuple(sorted(budgets))


@dataclass
class StepRecord:
    """One step's statistics on their way to the host (device tensors copied without blocking)."""

    rids: list[str]
    budget: int
    predicted_tokens: float  # the batch's expected committed tokens at the chosen budget
    predicted_seconds: float
    curves: Optional[torch.Tensor]  # [bs, len(budgets)] this step's expected commits; None if not drafted
    counts: Optional[torch.Tensor]  # [2, buckets] calibration counts; None if not drafted
    timing: "tuple[float, float] | tuple[torch.cuda.Event, ...]"  # (draft, verify) s, or CUDA events
    done: Optional[torch.cuda.Event] = None

    def ready(self) -> bool:
        timed = isinstance(self.timing[0], float) or self.timing[-1].query()
        return timed and (self.done is None or self.done.query())

    def seconds(self) -> tuple[float, float]:
        """(draft, rest of the forward) seconds; an undrafted step's time before its verify pass
        (scheduling) is part of its one-node step."""
        if isinstance(self.timing[0], float):
            draft, rest = self.timing
        else:
            start, drafted, end = self.timing
            draft, rest = start.elapsed_time(drafted) / 1e3, drafted.elapsed_time(end) / 1e3
        return (draft, rest) if self.curves is not None else (0.0, draft + rest)


@dataclass
class _Window:
    """Observability over the last log_every steps."""

    budgets: Counter = field(default_factory=Counter)
    drafted: int = 0
    predicted_tokens: float = 0.0
    observed_tokens: float = 0.0
    predicted_seconds: float = 0.0
    observed_seconds: float = 0.0
    steps: int = 0


class BudgetController:
    def __init__(self, config: ControllerConfig, costs: StepCostModel, calibration: AcceptanceCalibration) -> None:
        self.config = config
        self.budgets = list(config.budgets)
        self.costs = costs
        self.calibration = calibration
        self.drafting = True
        self.curves: dict[str, torch.Tensor] = {}  # rid -> running expected-commit curve (host)
        # Optimistic (every node accepted) until drafted steps say otherwise: speculation gets tried first.
        self.mean_curve = torch.tensor([float(n) for n in self.budgets])
        self.mean_weight = MEAN_PRIOR  # request-steps the mean curve stands for
        self.finished: deque[torch.Tensor] = deque(maxlen=FINISHED_KEPT)  # finished requests' last expected commits
        self.fared: dict[str, list[float]] = {}  # rid -> running [accepted drafts, expected drafts]
        self.stale: set[str] = set()  # requests whose evidence has decayed since they were last measured
        self.decays: dict[str, float] = {}  # rid -> its decay, where retries that failed have halved it
        self.undrafted = 0
        # batch-size cell -> running ratio of stage 2's drafting rate to stage 1's forecast, on steps
        # that started drafting again or explored
        self.forecast_bias: dict[int, float] = {}
        self.forecast: Optional[tuple[int, float]] = None  # such a step's (cell, stage 1's drafting rate)
        self.undrafted_seconds = 0.0  # predicted time of the undrafted steps since the last drafted one
        self.explore_interval = config.explore_every
        self.steps = 0
        self.pending: deque[StepRecord] = deque()
        self.awaiting_accepts: deque[tuple[list[str], int, list[float]]] = deque()
        self.window = _Window()

    # ------------------------------------------------------------- decisions

    def before_draft(self, rids: Sequence[str]) -> int:
        """Stage 1: 1 (no speculation) or the largest budget (draft; stage 2 may pick smaller)."""
        self._fold_arrived()
        self.steps += 1
        if self.config.policy == "cycle":
            return self.budgets[self.steps % len(self.budgets)]
        if len(self.budgets) == 1:  # budgets [1]: never speculate
            return 1
        bs = len(rids)
        if self.drafting and not self.costs.observed(bs, 1):
            return 1  # a probe: time the undrafted step at this batch size before comparing with it
        running = self._running_curves(rids)
        commits = self.commits(rids, running)
        new = sum(rid not in self.curves for rid in rids)  # requests not drafted yet
        seconds = [self.costs.step_seconds(bs, n) for n in self.budgets]
        rates = self._rates(commits.sum(dim=0), self._slowest(commits, new), seconds)
        off = self._bar(rates[0], bs)
        on = max(rates[1:])
        cell = self.costs.cell(bs)
        # Stage 1 forecasts from old evidence on a restart (or an exploration) and for requests
        # that have not drafted yet: there stage 2 checks it, and the cell's bias scales it.
        # From two requests up (a refuted restart at one request costs a fraction of a step, and
        # new requests must be able to start drafting there).
        forecasting = bs > 1 and (not self.drafting or new > 0)
        bias = self.forecast_bias.get(cell, 1.0) if forecasting else 1.0
        self.forecast = None
        if self.drafting and bias * on < off:
            self.drafting = False
        elif not self.drafting and bias * on > off * (1.0 + self.config.hysteresis):
            self.drafting = True
            self.explore_interval = self.config.explore_every
        if self.drafting or self._explore(bs):
            if forecasting:
                self.forecast = (cell, on)
            if not self.drafting:
                # Reset above if this exploration's estimates turn speculation back on.
                self.explore_interval = min(2 * self.explore_interval, max(self.config.explore_max, self.config.explore_every))
            self.undrafted, self.undrafted_seconds = 0, 0.0
            return self.budgets[-1]
        self.undrafted += 1
        self.undrafted_seconds += seconds[0]
        self._decay(rids, running)
        return 1

    def _decay(self, rids: Sequence[str], running: torch.Tensor) -> None:
        """An undrafted step's requests learn nothing new about their drafts: their own evidence
        (running curve, accepted / expected drafts) moves back toward the mean of all requests, so
        one that stopped drafting on a few poor steps is tried again. ``running`` [bs, len(budgets)]
        is this step's stack of their curves: one tensor op for the batch (per-request ops cost
        ~1 ms a step at 64 requests)."""
        rates = [self.decays.get(rid, self.config.decay) for rid in rids]
        decayed = (running + torch.tensor(rates)[:, None] * (self.mean_curve - running)).unbind()
        for rid, rate, curve in zip(rids, rates, decayed):
            if rid in self.curves:
                self.curves[rid] = curve
                self.stale.add(rid)
            fared = self.fared.get(rid)
            if fared is not None:
                fared[0] += rate * (fared[1] - fared[0])

    def _judge_retry(self, rid: str, bs: int) -> None:
        """A retried request's decay: halved unless drafting would start again for it alone (its
        fresh curve, trust applied, at this batch size's costs, past the margin and the
        hysteresis), so it is retried ever more rarely; restored if it would."""
        commits = self.commits([rid], self.curves[rid][None])[0]
        rates = self._rates(commits, commits, [self.costs.step_seconds(bs, n) for n in self.budgets])
        if max(rates[1:]) > self._bar(rates[0], bs) * (1.0 + self.config.hysteresis):
            self.decays.pop(rid, None)
        else:
            self.decays[rid] = 0.5 * self.decays.get(rid, self.config.decay)

    def _bar(self, plain_rate: float, bs: int) -> float:
        """The rate drafting must beat: a plain step's, by the margin from two requests up (one
        request cannot fall out of step)."""
        return plain_rate * (1.0 + (self.config.margin if bs > 1 else 0.0))

    def _explore(self, bs: int) -> bool:
        """Whether this undrafted stretch has been long enough, in steps and in time, to draft once."""
        if not self.config.explore_every or self.undrafted < self.explore_interval:
            return False
        smallest = self.budgets[1]
        extra = self.costs.draft_seconds(bs) + self.costs.verify_seconds(bs, smallest) - self.costs.verify_seconds(bs, 1)
        return extra <= self.config.explore_share * self.undrafted_seconds

    def after_draft(self, rids: Sequence[str], curves: Optional[torch.Tensor], drafted_budget: int) -> int:
        """Stage 2: the budget to verify, from this step's own curves [bs, len(budgets)] (host):
        the most expected commits net of the verify seconds, each second priced at the best
        whole-step rate these curves promise (the draft pass, paid now, recurs every step),
        among the budgets the slowest request allows."""
        if self.config.policy == "cycle" or curves is None:
            return drafted_budget
        bs = len(rids)
        commits = self.commits(rids, curves)
        value = commits.sum(dim=0)
        seconds = [self.costs.verify_seconds(bs, n) for n in self.budgets]
        allowed = self._rates(value, commits.min(dim=0).values, seconds)
        draft = self.costs.draft_seconds(bs)
        whole = [float(value[i]) / (seconds[i] + (draft if i else 0.0)) if allowed[i] > 0 else 0.0 for i in range(len(seconds))]
        # The forecast's floor counted the draft pass and new requests' expected slowest; this
        # rate's floor is the step's own (verify seconds): close enough for a running ratio.
        self._check_forecast(max(whole[1:]))
        rate = max(whole)
        net = [float(value[i]) - rate * seconds[i] if allowed[i] > 0 else -math.inf for i in range(len(seconds))]
        return self.budgets[max(range(len(net)), key=net.__getitem__)]

    def _check_forecast(self, drafting_rate: float) -> None:
        """Fold this step's drafting rate (from its own trees) against stage 1's forecast into
        the forecast bias of its batch-size cell."""
        if self.forecast is None:
            return
        cell, forecast = self.forecast
        self.forecast = None
        if forecast <= 0.0:
            return
        low, high = FORECAST_BOUNDS
        old = self.forecast_bias.get(cell, 1.0)
        self.forecast_bias[cell] = min(max(old + FORECAST_RATE * (drafting_rate / forecast - old), low), high)

    def _slowest(self, commits: torch.Tensor, new: int) -> torch.Tensor:
        """[len(budgets)]: the batch's slowest request's expected commits per budget (commits
        [bs, len(budgets)]). The ``new`` requests not drafted yet count as the expected slowest of
        as many drawn from the finished ones (the mean of all requests would let every burst's
        first step draft)."""
        slowest = commits.min(dim=0).values
        if new and commits.shape[0] > 1 and len(self.finished) >= FINISHED_NEEDED:  # one request has no tail
            slowest = torch.minimum(slowest, expected_min(torch.stack(list(self.finished)), new))
        return slowest

    def _rates(self, value: torch.Tensor, slowest: torch.Tensor, seconds: Sequence[float]) -> list[float]:
        """Expected committed tokens per second of each budget, from the batch's expected commits
        and its slowest request's ([len(budgets)] each) and the step's seconds per budget; 0 for a
        budget that slows the slowest request by more than ``slowest_loss`` (the batch's
        throughput counts, but so does its last request)."""
        floor = (1.0 - self.config.slowest_loss) * float(slowest[0]) / seconds[0]
        return [
            float(value[i]) / seconds[i] if i == 0 or float(slowest[i]) / seconds[i] >= floor else 0.0
            for i in range(len(self.budgets))
        ]

    def prediction(
        self, rids: Sequence[str], curves: Optional[torch.Tensor], budget: int, drafted: bool
    ) -> tuple[float, float]:
        """(expected committed tokens, predicted step seconds) of the chosen budget, for the log;
        a drafted step's seconds include its draft pass, whatever stage 2 verified."""
        curves = self._running_curves(rids) if curves is None else curves
        value = self.commits(rids, curves).sum(dim=0)
        bs = len(rids)
        seconds = self.costs.verify_seconds(bs, budget) + (self.costs.draft_seconds(bs) if drafted else 0.0)
        return float(value[self.budgets.index(budget)]), seconds

    def commits(self, rids: Sequence[str], curves: torch.Tensor) -> torch.Tensor:
        """[bs, len(budgets)]: each request's expected committed tokens per budget, from curves of the same shape."""
        fared = torch.tensor([self.fared.get(rid, (1.0, 1.0)) for rid in rids], dtype=torch.float64)
        trust = ((fared[:, 0] + 0.1) / (fared[:, 1] + 0.1)).clamp(max=2.0)  # accepted / expected drafts
        return 1.0 + trust[:, None] * (curves.double() - 1.0)

    def _running_curves(self, rids: Sequence[str]) -> torch.Tensor:
        return torch.stack([self.curves.get(rid, self.mean_curve) for rid in rids])

    # ------------------------------------------------------------- feedback

    def after_step(self, record: StepRecord) -> None:
        """Queue one step's statistics; device tensors go to the host without blocking."""
        if record.curves is not None and record.curves.is_cuda:
            record.curves = record.curves.to("cpu", non_blocking=True)
            record.counts = record.counts.to("cpu", non_blocking=True)
            record.done = torch.cuda.Event()
            record.done.record()
        self.pending.append(record)
        self._fold_arrived()

    def on_accepted(self, accepted_drafts: list[int]) -> None:
        """The scheduler's accept counts of the oldest step not yet reported (host, in batch order)."""
        self._fold_arrived()
        if not self.awaiting_accepts:
            return
        rids, budget, expected = self.awaiting_accepts.popleft()
        if len(rids) != len(accepted_drafts):
            return  # not the step we think it is; skip it rather than misattribute
        self.window.observed_tokens += sum(accepted_drafts) + len(accepted_drafts)
        if budget == 1:
            return  # nothing was drafted
        for rid, got, want in zip(rids, accepted_drafts, expected):
            fared = self.fared.setdefault(rid, [1.0, 1.0])
            fared[0] = 0.8 * fared[0] + 0.2 * got
            fared[1] = 0.8 * fared[1] + 0.2 * want

    def forget(self, rid: str) -> None:
        """A finished request's history is not needed any more."""
        curve = self.curves.pop(rid, None)
        if curve is not None:  # valued as a known request is (its trust applied)
            self.finished.append(self.commits([rid], curve[None])[0])
        self.fared.pop(rid, None)
        self.stale.discard(rid)
        self.decays.pop(rid, None)

    def _fold_arrived(self) -> None:
        while self.pending and self.pending[0].ready():
            step = self.pending.popleft()
            column = self.budgets.index(step.budget)
            expected = [0.0] * len(step.rids)
            if step.curves is not None:
                self.calibration.fold(step.counts)
                # A request's first measurement replaces the mean it started from: blended with
                # the optimistic start, a batch of new requests kept drafting for ~6 steps. So
                # does a retry's: the evidence it was retried on had gone stale.
                for rid, curve in zip(step.rids, step.curves):
                    if rid in self.stale:
                        self.stale.discard(rid)
                        self.curves[rid] = curve
                        self._judge_retry(rid, len(step.rids))
                        continue
                    old = self.curves.get(rid)
                    self.curves[rid] = curve if old is None else old + CURVE_RATE * (curve - old)
                # The mean is weighed by requests: one step of 64 settles it; the server's warm-up
                # request alone (a poor draft: [1.0, 1.07, 1.22, ...]) does not.
                bs = len(step.rids)
                self.mean_curve = self.mean_curve + bs / (self.mean_weight + bs) * (step.curves.mean(dim=0) - self.mean_curve)
                self.mean_weight = min(self.mean_weight + bs, MEAN_MEMORY)
                expected = (step.curves[:, column] - 1.0).tolist()
            self.awaiting_accepts.append((step.rids, step.budget, expected))
            draft, verify = step.seconds()
            self.costs.observe(len(step.rids), step.budget, draft, verify)
            w = self.window
            w.budgets[step.budget] += 1
            w.drafted += step.curves is not None
            w.predicted_tokens += step.predicted_tokens
            w.predicted_seconds += step.predicted_seconds
            w.observed_seconds += draft + verify + self.costs.overhead_seconds(len(step.rids))
            w.steps += 1
            if w.steps == self.config.log_every:
                self._log()

    def _log(self) -> None:
        w = self.window
        logger.info(
            "%s controller over %d steps: budgets %s, %d drafted; tokens/step predicted %.2f observed %.2f; "
            "step ms predicted %.2f observed %.2f; forecast bias by batch size %s",
            ALGORITHM_NAME,
            w.steps,
            dict(sorted(w.budgets.items())),
            w.drafted,
            w.predicted_tokens / w.steps,
            w.observed_tokens / w.steps,
            1e3 * w.predicted_seconds / w.steps,
            1e3 * w.observed_seconds / w.steps,
            {cell: round(bias, 2) for cell, bias in sorted(self.forecast_bias.items())},
        )
        self.window = _Window()
        self.costs.acceptance = self.calibration.state()
        self.costs.save()  # a small JSON write every log window: restarts and the profiler resume from it
