"""Value model: a request's expected committed tokens for every candidate node budget.

Best-first order makes the tree of n nodes the first n nodes of the tree of
N > n, so one draft pass prices every budget at once. A node is committed
iff its whole path is accepted, which the drafter estimates by the node's
score (the product of its probabilities along the path). Drafters are not
calibrated, so the estimate is replaced by the acceptance frequency observed
for scores like it: verified nodes are counted per score bucket (half
octaves), accepted or not, starting from the drafter's own estimate as a
prior of ``PRIOR_NODES`` pseudo-nodes per bucket and forgetting old steps
slowly (``decay`` per folded step). The counts are saved with the cost
profile (cost_model) and resumed at startup: from the drafter's estimate
alone (the twin pair's drafter is underconfident, its scores about half the
acceptance observed), a fresh server's first requests were valued too low to
draft, and the undrafted steps taught nothing (measured at one request: the
first request ran 29 undrafted steps of 30, 1.8x the time of the N=8 tree's).
Then, per request,

    E(n) = 1 + sum over nodes i = 1 .. n-1 of calibrated(score_i)

(the 1 is the bonus token every step commits).
"""

from __future__ import annotations

import torch

NUM_BUCKETS = 48  # half-octaves: the last bucket holds every score below 2^-23.5
PRIOR_NODES = 20.0


def score_buckets(scores: torch.Tensor) -> torch.Tensor:
    return (-torch.log2(scores.clamp(min=1e-30)) * 2).floor().clamp(0, NUM_BUCKETS - 1).long()


class AcceptanceCalibration:
    def __init__(self, device: torch.device, decay: float = 0.999) -> None:
        self.decay = decay
        centers = 2.0 ** (-(torch.arange(NUM_BUCKETS, dtype=torch.float64) + 0.5) / 2)
        self.prior = centers * PRIOR_NODES  # accepted pseudo-nodes out of PRIOR_NODES per bucket
        self.accepted = torch.zeros(NUM_BUCKETS, dtype=torch.float64)  # observed, decayed (host)
        self.verified = torch.zeros(NUM_BUCKETS, dtype=torch.float64)
        self.table = self._rates().float().to(device)  # calibrated acceptance per bucket

    def _rates(self) -> torch.Tensor:
        return (self.accepted + self.prior) / (self.verified + PRIOR_NODES)

    def expected_commits(self, scores: torch.Tensor, budgets: list[int]) -> torch.Tensor:
        """scores [bs, N] of a best-first tree -> [bs, len(budgets)] expected tokens per step."""
        per_node = self.table[score_buckets(scores)]
        per_node[:, 0] = 0.0  # the root is committed already
        cumulative = per_node.cumsum(dim=1)
        columns = torch.tensor([n - 1 for n in budgets], device=scores.device)
        return 1.0 + cumulative[:, columns]

    @staticmethod
    def step_counts(scores: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
        """Verified non-root nodes of one step per bucket: [2, NUM_BUCKETS] (accepted, verified)."""
        buckets = score_buckets(scores[:, 1:]).reshape(-1)
        return torch.stack(
            [
                torch.bincount(buckets, weights=accepted[:, 1:].reshape(-1).float(), minlength=NUM_BUCKETS),
                torch.bincount(buckets, minlength=NUM_BUCKETS).float(),
            ]
        )

    def state(self) -> dict:
        """The learned counts, as JSON (kept in the cost profile's cache file)."""
        return {"accepted": self.accepted.tolist(), "verified": self.verified.tolist()}

    def load_state(self, state: dict) -> float:
        """Resume counts a previous server learned for this pair; returns the verified nodes they
        stand for (0 if there are none or they are of another layout)."""
        accepted, verified = state.get("accepted"), state.get("verified")
        layout_ok = isinstance(accepted, list) and isinstance(verified, list)
        if not (layout_ok and len(accepted) == len(verified) == NUM_BUCKETS):
            return 0.0
        self.accepted = torch.tensor(accepted, dtype=torch.float64)
        self.verified = torch.tensor(verified, dtype=torch.float64)
        self.table.copy_(self._rates().float())
        return float(self.verified.sum())

    def fold(self, counts: torch.Tensor) -> None:
        """Add one step's host counts, forgetting old steps a little."""
        counts = counts.double()
        self.accepted = self.accepted * self.decay + counts[0]
        self.verified = self.verified * self.decay + counts[1]
        self.table.copy_(self._rates().float())
