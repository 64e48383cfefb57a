"""The server's own cost profile, for predictions before any traffic is served.

The adaptive controller prices budgets with a cost model built from a startup
profile that the SGL_DFLASH worker measures and caches, and refines from its
real steps, saving the refinement into the same file (cost_model.py). The
profiler predicts from that same file: one a server has written already, or
one measured now by starting a real SGL_DFLASH server once with
``--speculative-adaptive`` and a config whose ``profile_path`` names where
it goes, sending it a few of the user's requests at each concurrency (so
that it learns the scheduler's own per-step work, which the startup profile
cannot see), then stopping it. Nothing here re-implements the measurement.

Prediction at concurrency c for node budget n with mean accept length tau(n)
(tokens committed per request per step; tau(1) = 1, no speculation):

    tokens/s(n) = c * tau(n) / step_seconds(c, n)

The controller's choice is the budget with the most tokens/s; the speedup is
over ``c / step_seconds(c, 1)``, the worker's own undrafted step, which
stands in for plain decoding's step (it costs more than plain decoding's step
where the worker's host work is not small against the forward;
bench/profile_check.py measures by how much).
"""

from __future__ import annotations

import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgl_dflash.cost_model import StepCostModel, default_profile_path
from sgl_dflash.launcher import Server


class ProfileError(ValueError):
    """A profile file that is missing, unreadable or not a cost profile."""


@dataclass(frozen=True)
class CostProfile:
    path: Path
    key: dict  # what the server measured it for: models, device, threads, top-k, budgets, ...
    profile: dict  # {"batch_sizes": [...], "draft": [s per bs], "verify": {"n": [s per bs]}}
    online: dict  # the server's refinement from real steps (StepCostModel.online_state), {} if none
    source: str  # how this run got it, for the report

    @property
    def refined_steps(self) -> int:
        return int(self.online.get("steps", 0))

    @property
    def budgets(self) -> list[int]:
        return sorted(int(n) for n in self.profile["verify"])

    def cost_model(self) -> StepCostModel:
        costs = StepCostModel(self.profile, self.budgets)
        costs.load_online_state(self.online)
        return costs


def load_profile(path: Path, source: str = "cached file") -> CostProfile:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ProfileError(f"cost profile {path}: cannot read it ({e}).") from None
    profile = raw.get("profile") if isinstance(raw, dict) else None
    if not _is_profile(profile):
        raise ProfileError(
            f"cost profile {path}: expected {{\"key\": ..., \"profile\": {{\"batch_sizes\", \"draft\", "
            "\"verify\"}}}} as an SGL_DFLASH server with --speculative-adaptive writes it."
        )
    return CostProfile(path, raw.get("key") or {}, profile, raw.get("online") or {}, source)


def _is_profile(profile: Any) -> bool:
    if not isinstance(profile, dict) or not isinstance(profile.get("verify"), dict):
        return False
    sizes = profile.get("batch_sizes")
    columns = [profile.get("draft"), *profile["verify"].values()]
    if not (
        isinstance(sizes, list) and bool(sizes) and "1" in profile["verify"]
        and all(isinstance(c, list) and len(c) == len(sizes) for c in columns)
    ):
        return False
    # Larger budgets may be unmeasured (null) past some batch size; batch size 1 and the
    # draft / one-node columns are always measured.
    return None not in profile["draft"] + profile["verify"]["1"] and all(c[0] is not None for c in columns)


def adaptive_server(target: Path, draft: Path, *, device: str, topk: int, node_budget: int,
                    config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> Server:
    """An SGL_DFLASH server with the adaptive controller (not yet ready: call wait_ready)."""
    extra = ("--speculative-eagle-topk", str(topk), "--speculative-adaptive",
             "--speculative-adaptive-config", str(config_path))
    return Server(target, log_path, device=device, env=env, draft=draft, block_size=node_budget, extra=extra)


# The profiler's server logs (and so saves its refinement) often: its calibration run is short.
PROFILER_KNOBS = {"log_every": 8}


def server_profile(target: Path, draft: Path, *, device: str, topk: int, node_budget: int, path: Path,
                   calibration: list[list[int]], concurrency: list[int], max_tokens: int = 32) -> CostProfile:
    """Start an adaptive SGL_DFLASH server that writes its profile to ``path``, send it the
    calibration prompts at each concurrency (it refines the profile from those steps), stop it."""
    work = Path(tempfile.mkdtemp(prefix="sgl_dflash_profile_"))
    config = work / "adaptive.json"
    config.write_text(json.dumps({**PROFILER_KNOBS, "profile_path": str(path)}))
    server = adaptive_server(target, draft, device=device, topk=topk, node_budget=node_budget,
                             config_path=config, log_path=work / "server.log")
    try:
        server.wait_ready()  # the profile is measured (or loaded) before the server is ready
        for c in concurrency:
            prompts = [calibration[i % len(calibration)] for i in range(2 * c)]
            with ThreadPoolExecutor(c) as pool:
                list(pool.map(lambda ids: server.generate(ids, max_new_tokens=max_tokens, temperature=0), prompts))
    finally:
        server.stop()
    return load_profile(path, f"measured now by an SGL_DFLASH server started by the profiler (log {server.log_path})")


def default_path(target: Path, draft: Path, device: str, topk: int, node_budget: int) -> Path:
    """Where the profiler keeps the profiles its servers measure (one per setup)."""
    setup = [str(Path(target).resolve()), str(Path(draft).resolve()), device, topk, node_budget, PROFILER_KNOBS]
    return default_profile_path({"profiler setup": setup})


@dataclass(frozen=True)
class Prediction:
    concurrency: int
    step_seconds: dict[int, float]  # budget -> seconds per step at this concurrency
    rates: dict[int, float]  # budget -> output tokens/s; budget 1 is no speculation

    @property
    def no_speculation(self) -> float:
        """Tokens/s of the worker's undrafted step (budget 1), the baseline of every speedup."""
        return self.rates[1]

    @property
    def choice(self) -> int:
        return max(self.rates, key=self.rates.__getitem__)

    @property
    def speedup(self) -> float:
        return self.rates[self.choice] / self.no_speculation


def predict(costs: StepCostModel, taus: dict[int, float], concurrency: int) -> Prediction:
    """taus: budget -> mean tokens committed per request per step (budget 1 must map to 1)."""
    seconds = {n: costs.step_seconds(concurrency, n) for n in sorted(taus)}
    return Prediction(concurrency, seconds, {n: concurrency * taus[n] / seconds[n] for n in seconds})
