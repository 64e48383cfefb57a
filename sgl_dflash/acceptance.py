"""Accept step: which drafted tokens of a verified block are kept.

A policy maps (candidates, target logits, sampling params) to an
``Acceptance``. Both policies here are lossless:

* ``accept_greedy``: longest prefix where the draft equals the target argmax.
* ``accept_by_rejection``: speculative rejection sampling with the draft as a
  point mass q = delta(d): accept d with probability p(d), else sample the
  replacement from the residual p with d removed. The output is distributed
  exactly as the target's own sampler (temperature, top-k, top-p, min-p,
  same semantics as SGLang's sampler). A drafter-aware policy (q = draft
  softmax) plugs in here with the same signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from sgl_dflash.kernels.greedy_accept import commit_tokens, greedy_accept


@dataclass(frozen=True)
class Acceptance:
    accept_len: torch.Tensor  # [bs] int32: drafted tokens kept
    bonus: torch.Tensor  # [bs] int64: target token after the kept drafts
    out_tokens: torch.Tensor  # [bs, B] int64: kept drafts, bonus, then padding

    @property
    def commit_lens(self) -> torch.Tensor:
        """Tokens committed to the sequence this step (kept drafts + bonus)."""
        return self.accept_len + 1


def accept_greedy(candidates: torch.Tensor, target_top1: torch.Tensor) -> Acceptance:
    return Acceptance(*greedy_accept(candidates, target_top1.view_as(candidates)))


def target_probs(logits: torch.Tensor, sampling_info: Any, block: int) -> torch.Tensor:
    """The target sampler's distribution for every verify row, [bs * B, V] fp32.

    Mirrors sglang.srt.layers.sampler: softmax(logits / T), then zero ranks
    >= top_k, tokens whose preceding cumulative mass exceeds top_p, and tokens
    below min_p * max; the sampler renormalizes implicitly, we explicitly.
    """
    rows = lambda t: t.view(-1).repeat_interleave(block)  # noqa: E731 (per request -> per row)
    probs = torch.softmax(logits.float() / rows(sampling_info.temperatures)[:, None], dim=-1)
    if not (
        sampling_info.need_top_k_sampling
        or sampling_info.need_top_p_sampling
        or sampling_info.need_min_p_sampling
    ):
        return probs
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    cum = sorted_p.cumsum(dim=-1)
    rank = torch.arange(sorted_p.shape[-1], device=probs.device)[None, :]
    drop = rank >= rows(sampling_info.top_ks)[:, None]
    drop |= (cum - sorted_p) > rows(sampling_info.top_ps)[:, None]
    if sampling_info.need_min_p_sampling:
        drop |= sorted_p < sorted_p[:, :1] * rows(sampling_info.min_ps)[:, None]
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    filtered = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
    return filtered / filtered.sum(dim=-1, keepdim=True)


def accept_by_rejection(
    candidates: torch.Tensor,
    logits: torch.Tensor,
    sampling_info: Any,
    generator: Optional[torch.Generator] = None,
) -> Acceptance:
    bs, block = candidates.shape
    p = target_probs(logits, sampling_info, block).view(bs, block, -1)
    drafts = candidates[:, 1:].long()
    p_draft = p[:, :-1].gather(2, drafts[..., None]).squeeze(-1)  # [bs, B-1]
    u = torch.rand(p_draft.shape, device=p.device, generator=generator)
    accept_len = (u < p_draft).to(torch.int32).cumprod(dim=1).sum(dim=1).to(torch.int32)

    acc = accept_len.long()
    dist = p[torch.arange(bs, device=p.device), acc]  # [bs, V] at the first unaccepted row
    rejected = acc < block - 1
    rejected_tok = drafts.gather(1, acc.clamp(max=block - 2)[:, None])
    residual = dist.scatter(1, rejected_tok, 0.0)
    # Residual mass can only vanish through rounding when p(d) ~ 1; then sample p itself.
    use_residual = rejected[:, None] & (residual.sum(dim=-1, keepdim=True) > 0)
    dist = torch.where(use_residual, residual, dist)
    bonus = torch.multinomial(dist, 1, generator=generator).squeeze(1)
    return Acceptance(accept_len, bonus, commit_tokens(candidates, accept_len, bonus))
