"""Frequency, presence, repetition penalties and min_new_tokens, exact at every tree node.

Plain decoding penalizes the logits of output token m by the output tokens
0..m-1 (SGLang's penalizers: additive frequency/presence and the min_new_tokens
block of stop tokens, then the multiplicative repetition penalty). At tree
node i of depth d that state is the request's committed output (the root, the
last bonus, included) plus the drafts on i's path, depths 1..d; the row
computes output token ``out_len + d``. SGLang's scheduler keeps no penalty
state for speculative requests, so this module keeps it on the device,
indexed by request slot, for the requests that use penalties:
``counts [slots, V]`` occurrences of each token in the committed output and
``out_len [slots]``. A batch without penalties costs nothing: the caller
checks ``PenaltyState.needed`` (O(1)) first.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from sgl_dflash.step import DraftTree


def _uses_penalties(req: Any) -> bool:
    p = req.sampling_params
    return (
        p.frequency_penalty != 0.0
        or p.presence_penalty != 0.0
        or p.repetition_penalty != 1.0
        or p.min_new_tokens > 0
    )


def _stop_ids(req: Any) -> set[int]:
    """The tokens min_new_tokens blocks, as SGLang's min-new-tokens penalizer lists them."""
    tok = req.tokenizer
    ids = set(req.sampling_params.stop_token_ids or ()) | set(req.eos_token_ids or ())
    ids |= set(getattr(tok, "additional_stop_token_ids", None) or ())
    if getattr(tok, "eos_token_id", None) is not None:
        ids.add(tok.eos_token_id)
    return {i for i in ids if i is not None}


class PenaltyState:
    def __init__(self, slots: int, vocab_size: int, device: torch.device) -> None:
        self.slots, self.vocab_size, self.device = slots, vocab_size, device
        self.counts: Optional[torch.Tensor] = None  # [slots, V] fp32, allocated on first use
        self.out_len: Optional[torch.Tensor] = None  # [slots] int64

    @staticmethod
    def needed(sampling_info: Any) -> bool:
        """SGLang prepares its penalty tensors iff some request of the batch has penalties."""
        return sampling_info is not None and (
            getattr(sampling_info, "acc_additive_penalties", None) is not None
            or getattr(sampling_info, "acc_scaling_penalties", None) is not None
        )

    def _ensure(self) -> None:
        if self.counts is None:
            self.counts = torch.zeros(self.slots, self.vocab_size, device=self.device)
            self.out_len = torch.zeros(self.slots, dtype=torch.long, device=self.device)

    def start(self, reqs: Sequence[Any], slots: torch.Tensor, first_tokens: torch.Tensor) -> None:
        """After a prefill: the output so far (kept across a retraction) plus the first token."""
        self._ensure()
        for i, req in enumerate(reqs):
            if not _uses_penalties(req):
                continue
            row = torch.zeros(self.vocab_size, device=self.device)
            if req.output_ids:
                ids = torch.tensor(req.output_ids, dtype=torch.long, device=self.device)
                row.index_add_(0, ids, torch.ones_like(ids, dtype=row.dtype))
            row[first_tokens[i]] += 1
            self.counts[slots[i]] = row
            self.out_len[slots[i]] = len(req.output_ids) + 1

    def commit(self, slots: torch.Tensor, out_tokens: torch.Tensor, commit_lens: torch.Tensor) -> None:
        """Add one step's committed tokens (out_tokens [bs, D+1], first commit_lens valid)."""
        self._ensure()
        valid = torch.arange(out_tokens.shape[1], device=self.device)[None, :] < commit_lens[:, None]
        rows = self.counts[slots]
        rows.scatter_add_(1, out_tokens, valid.to(rows.dtype))
        self.counts[slots] = rows
        self.out_len[slots] += commit_lens.long()

    def apply(self, logits: torch.Tensor, reqs: Sequence[Any], slots: torch.Tensor, tree: DraftTree) -> None:
        """Penalize logits [bs * N, V] in place, each node by its own output history."""
        self._ensure()
        bs, n = tree.tokens.shape
        dev = logits.device
        params = [r.sampling_params for r in reqs]
        freq = torch.tensor([p.frequency_penalty for p in params], device=dev)[:, None]
        pres = torch.tensor([p.presence_penalty for p in params], device=dev)[:, None]
        rep = torch.tensor([p.repetition_penalty for p in params], device=dev)[:, None]
        min_new = torch.tensor([p.min_new_tokens for p in params], device=dev)
        stop = torch.zeros(bs, self.vocab_size, device=dev)
        for i, req in enumerate(reqs):
            if params[i].min_new_tokens > 0:
                stop[i, list(_stop_ids(req))] = float("-inf")

        logits3 = logits.view(bs, n, -1)
        base = self.counts[slots]  # [bs, V]
        # The drafts on each node's path (depths 1..d); duplicates count twice.
        path_nodes = tree.path_table[:, :, 1:]  # [bs, N, D]
        on_path = path_nodes >= 0
        path_tokens = torch.where(on_path, tree.tokens.gather(1, path_nodes.clamp(min=0).view(bs, -1)).view_as(path_nodes), 0)
        # Slots past a node's depth repeat its depth-1 draft (the root's: token 0), so every
        # slot's recomputed value below is that token's right value and the scatter agrees.
        path_tokens = torch.where(on_path, path_tokens, path_tokens[:, :, :1])
        raw = logits3.gather(2, path_tokens)  # before any penalty
        same = (path_tokens[..., :, None] == path_tokens[..., None, :]) & on_path[..., None, :]
        total = base.gather(1, path_tokens.view(bs, -1)).view_as(raw) + same.sum(-1)

        blocked = (self.out_len[slots][:, None] + tree.depths) < min_new[:, None]  # [bs, N]
        # Every node sees at least the committed output's penalties.
        logits3 -= (freq * base + pres * (base > 0))[:, None, :]
        logits3 += torch.where(blocked[..., None], stop[:, None, :], 0.0)
        _scale(logits3, torch.where(base > 0, rep, 1.0)[:, None, :])
        # Tokens on the node's own path: recompute from the raw logit with their full count.
        fixed = raw - freq[..., None] * total - pres[..., None] * (total > 0)
        fixed += torch.where(blocked[..., None], stop.gather(1, path_tokens.view(bs, -1)).view_as(raw), 0.0)
        _scale(fixed, torch.where(total > 0, rep[..., None], 1.0))
        logits3.scatter_(2, path_tokens, fixed)


def _scale(logits: torch.Tensor, penalty: torch.Tensor) -> None:
    """SGLang's repetition penalty: divide positive logits, multiply negative ones."""
    logits.copy_(torch.where(logits < 0, logits * penalty, logits / penalty))
