"""Server-wide running acceptance figures, logged periodically.

Per request SGLang itself reports ``meta_info.spec_accept_length`` from the
commit lengths the worker returns; this adds the server-wide running mean
accept length (committed tokens per step), the mean accepted depth (drafts
kept per step) and how often an accepted node was not its position's top-1
draft (a branch the chain would not have had). Sums stay on the device and
are read back only when logging, so the decode loop never waits on them.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from sgl_dflash import ALGORITHM_NAME

logger = logging.getLogger(__name__)


class AcceptStats:
    def __init__(self, log_every: int = 64) -> None:
        self.log_every = log_every
        self.steps = 0
        self.request_steps = 0
        self._sums: Optional[torch.Tensor] = None  # [committed tokens, accepted drafts that were branches]

    def record(self, commit_lens: torch.Tensor, branches_taken: torch.Tensor) -> None:
        sums = torch.stack([commit_lens.sum(dtype=torch.int64), branches_taken.sum(dtype=torch.int64)])
        self._sums = sums if self._sums is None else self._sums + sums
        self.request_steps += commit_lens.numel()
        self.steps += 1
        if self.steps % self.log_every == 0:
            committed, branches = self.totals()
            drafts = committed - self.request_steps
            logger.info(
                "%s running mean accept length %.3f tokens/step, accepted depth %.3f, "
                "non-top-1 branch taken for %.1f%% of accepted drafts (%d request-steps)",
                ALGORITHM_NAME,
                committed / self.request_steps,
                drafts / self.request_steps,
                100.0 * branches / max(drafts, 1),
                self.request_steps,
            )

    def totals(self) -> tuple[int, int]:
        """(committed tokens, accepted drafts that were not their position's top-1)."""
        if self._sums is None:
            return 0, 0
        committed, branches = self._sums.tolist()
        return committed, branches
