"""What one decode step knows, stage by stage (shapes per batch of bs requests).

``StepWindow`` comes out of *schedule*, ``DraftTree`` out of *draft*; *verify*,
*accept* and *commit* read them. B, K and N are defined in ``config``; D is
the tree's deepest possible node, ``min(B - 1, N - 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class StepWindow:
    """The KV slots a step may write: the draft block and the tree share them."""

    prefix_lens: torch.Tensor  # [bs] committed tokens; the root (bonus) sits at this position
    slots: torch.Tensor  # [bs, W] reserved KV slots after the prefix, W = max(B, N)
    kv_loc_plan: Any  # SGLang KVLocPlan over `slots` (draft, verify and commit bind parts of it)
    kv_lens_cpu: torch.Tensor  # [bs] int32 on the host: an upper bound of each KV length during the step

    @property
    def batch_size(self) -> int:
        return self.slots.shape[0]


@dataclass(frozen=True)
class DraftTree:
    """The verified token tree of every request; node 0 is the root (the bonus token).

    Nodes are in best-first order, so a parent precedes its children.
    """

    tokens: torch.Tensor  # [bs, N] int64
    parents: torch.Tensor  # [bs, N] int64, -1 for the root
    depths: torch.Tensor  # [bs, N] int64, 0 for the root
    scores: torch.Tensor  # [bs, N] fp32: product of drafter probabilities along the path
    is_top1: torch.Tensor  # [bs, N] bool: the token is its position's most likely draft (root: True)
    positions: torch.Tensor  # [bs, N] int64: prefix_len + depth
    ancestors: torch.Tensor  # [bs, N, N] bool: [b, i, j] = j is an ancestor of i or i itself
    path_table: torch.Tensor  # [bs, N, D+1] int64: [b, i, d] = i's ancestor at depth d, -1 below i

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[1]

    @property
    def max_depth(self) -> int:
        return self.path_table.shape[2] - 1

    def prefix(self, n: int) -> "DraftTree":
        """The tree of the first n nodes: in best-first order, the best tree of n nodes."""
        if n == self.num_nodes:
            return self
        depth = min(self.max_depth, n - 1)
        return DraftTree(
            tokens=self.tokens[:, :n],
            parents=self.parents[:, :n],
            depths=self.depths[:, :n],
            scores=self.scores[:, :n],
            is_top1=self.is_top1[:, :n],
            positions=self.positions[:, :n],
            ancestors=self.ancestors[:, :n, :n],
            path_table=self.path_table[:, :n, : depth + 1],
        )
