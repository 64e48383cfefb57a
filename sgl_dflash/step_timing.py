"""Opt-in time per decode step, split into draft / verify / other (``SGL_DFLASH_STEP_TIMING=1``).

Off by default: timing a stage means waiting for the device at its end,
which serving must not pay. When on, every ``LOG_EVERY`` steps the server log
gets one line (bench/compare.py parses it):

    SGL_DFLASH step timing over last 64 steps (ms/step): draft 1.23 verify 4.56 other 0.78 (batch 3.2)
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Iterator

import torch

from sgl_dflash import ALGORITHM_NAME

logger = logging.getLogger(__name__)

ENV_VAR = "SGL_DFLASH_STEP_TIMING"
LOG_EVERY = 64
STAGES = ("draft", "verify")


class StepTimer:
    def __init__(self, device: torch.device) -> None:
        self.enabled = os.environ.get(ENV_VAR) == "1"
        self.device = torch.device(device)
        self._reset()

    def _reset(self) -> None:
        self.seconds = dict.fromkeys((*STAGES, "step"), 0.0)
        self.steps = 0
        self.requests = 0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        start = self._now()
        yield
        self.seconds[name] += self._now() - start

    def step_done(self, step_start: float, batch_size: int) -> None:
        if not self.enabled:
            return
        self.seconds["step"] += self._now() - step_start
        self.steps += 1
        self.requests += batch_size
        if self.steps == LOG_EVERY:
            ms = {k: 1e3 * v / self.steps for k, v in self.seconds.items()}
            logger.info(
                "%s step timing over last %d steps (ms/step): draft %.2f verify %.2f other %.2f (batch %.1f)",
                ALGORITHM_NAME,
                self.steps,
                ms["draft"],
                ms["verify"],
                ms["step"] - ms["draft"] - ms["verify"],
                self.requests / self.steps,
            )
            self._reset()

    def step_start(self) -> float:
        return self._now() if self.enabled else 0.0
