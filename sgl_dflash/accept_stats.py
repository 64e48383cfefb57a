"""Running mean accept length of the server, logged periodically.

Per request SGLang itself reports ``meta_info.spec_accept_length`` from the
commit lengths the worker returns; this adds the server-wide running mean.
Sums stay on the device and are read back only when logging, so the decode
loop never waits on them.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from sgl_dflash import ALGORITHM_NAME

logger = logging.getLogger(__name__)


class AcceptStats:
    def __init__(self, block_size: int, log_every: int = 64) -> None:
        self.block_size = block_size
        self.log_every = log_every
        self.steps = 0
        self.request_steps = 0
        self._committed: Optional[torch.Tensor] = None

    def record(self, commit_lens: torch.Tensor) -> None:
        total = commit_lens.sum(dtype=torch.int64)
        self._committed = total if self._committed is None else self._committed + total
        self.request_steps += commit_lens.numel()
        self.steps += 1
        if self.steps % self.log_every == 0:
            logger.info(
                "%s running mean accept length %.3f tokens/step (block %d, %d request-steps)",
                ALGORITHM_NAME,
                self.mean_accept_length(),
                self.block_size,
                self.request_steps,
            )

    def mean_accept_length(self) -> float:
        if not self.request_steps:
            return 0.0
        return int(self._committed) / self.request_steps
