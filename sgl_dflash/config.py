"""SGL_DFLASH's own settings, resolved once at launch and read by every scheduler.

SGLang's server arguments carry only the fields it knows, and SGLang reads
``speculative_num_draft_tokens`` as the per-step KV window (it reserves
twice that per request) and ``speculative_eagle_topk`` as EAGLE's branching.
So the launcher resolves the user's flags into a ``SpecConfig``, publishes it
in the environment its subprocesses inherit, and gives SGLang the values it
needs: the window ``max(N, B)`` and top-k 1.

Terms (used throughout the package):
* B, block size: positions of one draft pass, ``[bonus, MASK x (B-1)]``;
  fixed by the drafter checkpoint.
* K, top-k: children per tree node, from each block position's top-K
  tokens (1 = a chain).
* N, node budget: tree nodes verified per request per step, root (the bonus
  token) included. The chain of a whole block is K = 1, N = B. With the
  adaptive controller N is the largest budget a step may use.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Optional

ENV_VAR = "SGL_DFLASH_CONFIG"


@dataclass(frozen=True)
class SpecConfig:
    block_size: int  # B
    topk: int  # K
    node_budget: int  # N
    adaptive: Optional[str] = None  # controller knobs (JSON text, "" = defaults); None = fixed budget N

    @property
    def window(self) -> int:
        """KV slots one step writes: the draft block and the verified tree share them."""
        return max(self.block_size, self.node_budget)

    def publish(self) -> None:
        os.environ[ENV_VAR] = json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "SpecConfig":
        raw = os.environ.get(ENV_VAR)
        if raw is None:
            raise RuntimeError(
                f"{ENV_VAR} is not set: SGL_DFLASH's launch-time argument resolution did not run "
                "in this process tree."
            )
        return cls(**json.loads(raw))
