"""Plain-torch block attention for TARGET_VERIFY batches (CPU path).

Each request has ``prefix_len`` committed tokens in the KV pool followed by
``T`` new tokens (already written): a verified tree (``T = N``) or a draft
block (``T = B``). Every new query sees the whole prefix; among the new
tokens it sees its ancestors (``custom_mask``, SGLang's flat tree-mask
format, see tree_mask), the tokens before it (``causal``: a chain), or all
of them (DFlash draft layers, non-causal).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def block_verify_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    prefix_lens: torch.Tensor,
    *,
    causal: bool,
    scaling: float,
    custom_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """q: [bs * T, Hq, D] -> out: [bs * T, Hq, Dv]."""
    bs = prefix_lens.numel()
    new = q.shape[0] // bs
    out = q.new_empty(q.shape[0], q.shape[1], v_cache.shape[-1])
    in_block = torch.ones(new, new, dtype=torch.bool, device=q.device).tril() if causal else None
    mask_start = 0
    for i, (row, prefix) in enumerate(zip(req_pool_indices.tolist(), prefix_lens.tolist())):
        locs = req_to_token[row, : prefix + new]
        k = k_cache[locs].to(q.dtype).transpose(0, 1)
        v = v_cache[locs].to(q.dtype).transpose(0, 1)
        qi = q[i * new : (i + 1) * new].transpose(0, 1)
        # Unmasked where every query sees every key (one new token; a non-causal block):
        # SDPA's CPU kernel is ~30% slower per call with a mask, and an undrafted step is all calls.
        mask = None
        if custom_mask is not None:
            size = new * (prefix + new)
            if new > 1:
                mask = custom_mask[mask_start : mask_start + size].view(new, prefix + new)
            mask_start += size
        elif in_block is not None and new > 1:
            mask = torch.cat(
                [torch.ones(new, prefix, dtype=torch.bool, device=q.device), in_block], dim=1
            )
        o = F.scaled_dot_product_attention(
            qi, k, v, attn_mask=mask, scale=scaling, enable_gqa=qi.shape[0] != k.shape[0]
        )
        out[i * new : (i + 1) * new] = o.transpose(0, 1)
    return out
