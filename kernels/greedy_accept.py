"""Greedy block acceptance: longest prefix of drafts that the target agrees with.

For each request, ``candidates[i] = [bonus, d_1 .. d_{B-1}]`` and
``target_top1[i, j]`` is the target's argmax after position j. Outputs:
``accept_len[i]`` = number of leading j with d_{j+1} == target_top1[i, j];
``bonus[i]`` = target_top1[i, accept_len[i]]; ``out_tokens[i]`` = the accepted
drafts followed by the bonus (positions past accept_len+1 are 0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _greedy_accept_kernel(
    candidates_ptr,
    target_ptr,
    accept_len_ptr,
    bonus_ptr,
    out_tokens_ptr,
    BLOCK: tl.constexpr,
    BLOCK_POW2: tl.constexpr,
):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_POW2)
    in_drafts = offs < BLOCK - 1
    drafts = tl.load(candidates_ptr + row * BLOCK + offs + 1, mask=in_drafts, other=-1)
    top1 = tl.load(target_ptr + row * BLOCK + offs, mask=offs < BLOCK, other=-2)
    # First mismatch position; BLOCK - 1 when every draft matches.
    mismatch = tl.where(in_drafts & (drafts != top1), offs, BLOCK - 1)
    accept = tl.min(mismatch, axis=0)
    bonus = tl.sum(tl.where(offs == accept, top1, 0), axis=0)
    out = tl.where(offs < accept, drafts, tl.where(offs == accept, bonus, 0))
    tl.store(out_tokens_ptr + row * BLOCK + offs, out, mask=offs < BLOCK)
    tl.store(accept_len_ptr + row, accept)
    tl.store(bonus_ptr + row, bonus)


def greedy_accept_triton(
    candidates: torch.Tensor, target_top1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    bs, block = candidates.shape
    candidates = candidates.to(torch.int64).contiguous()
    target_top1 = target_top1.to(torch.int64).contiguous()
    accept_len = torch.empty(bs, dtype=torch.int32, device=candidates.device)
    bonus = torch.empty(bs, dtype=torch.int64, device=candidates.device)
    out_tokens = torch.empty_like(candidates)
    if bs:
        _greedy_accept_kernel[(bs,)](
            candidates, target_top1, accept_len, bonus, out_tokens,
            BLOCK=block, BLOCK_POW2=triton.next_power_of_2(block),
        )
    return accept_len, bonus, out_tokens


def greedy_accept_torch(
    candidates: torch.Tensor, target_top1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain-torch reference (and the CPU path)."""
    bs, block = candidates.shape
    matches = (candidates[:, 1:] == target_top1[:, :-1]).to(torch.int32)
    accept_len = matches.cumprod(dim=1).sum(dim=1).to(torch.int32)
    bonus = target_top1.gather(1, accept_len.long()[:, None]).squeeze(1).to(torch.int64)
    return accept_len, bonus, commit_tokens(candidates, accept_len, bonus)


def commit_tokens(
    candidates: torch.Tensor, accept_len: torch.Tensor, bonus: torch.Tensor
) -> torch.Tensor:
    """[accepted drafts..., bonus, 0...] per request."""
    bs, block = candidates.shape
    offs = torch.arange(block, device=candidates.device)[None, :]
    drafts = torch.nn.functional.pad(candidates[:, 1:], (0, 1)).to(torch.int64)
    acc = accept_len.long()[:, None]
    return torch.where(offs < acc, drafts, torch.where(offs == acc, bonus.long()[:, None], 0))


def greedy_accept(
    candidates: torch.Tensor, target_top1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if candidates.is_cuda:
        return greedy_accept_triton(candidates, target_top1)
    return greedy_accept_torch(candidates, target_top1)
