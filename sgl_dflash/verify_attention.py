"""Plain-torch block attention for TARGET_VERIFY batches (CPU path).

Each request has ``prefix_len`` committed tokens in the KV pool followed by
one block of ``B`` new tokens (already written). Every block query sees the
whole prefix; inside the block it sees the tokens before it (target verify,
causal) or the whole block (DFlash draft layers, non-causal).
"""

from __future__ import annotations

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
) -> torch.Tensor:
    """q: [bs * B, Hq, D] -> out: [bs * B, Hq, Dv]."""
    bs = prefix_lens.numel()
    block = q.shape[0] // bs
    out = q.new_empty(q.shape[0], q.shape[1], v_cache.shape[-1])
    in_block = torch.ones(block, block, dtype=torch.bool, device=q.device)
    if causal:
        in_block = in_block.tril()
    for i, (row, prefix) in enumerate(zip(req_pool_indices.tolist(), prefix_lens.tolist())):
        locs = req_to_token[row, : prefix + block]
        k = k_cache[locs].to(q.dtype).transpose(0, 1)
        v = v_cache[locs].to(q.dtype).transpose(0, 1)
        qi = q[i * block : (i + 1) * block].transpose(0, 1)
        mask = torch.cat(
            [torch.ones(block, prefix, dtype=torch.bool, device=q.device), in_block], dim=1
        )
        o = F.scaled_dot_product_attention(
            qi, k, v, attn_mask=mask, scale=scaling, enable_gqa=qi.shape[0] != k.shape[0]
        )
        out[i * block : (i + 1) * block] = o.transpose(0, 1)
    return out
