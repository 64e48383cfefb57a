"""Commit stage helpers: move the accepted path into the first slots of the window.

The verify pass wrote node i's target KV into window slot i. The sequence
continues with the accepted path, so node ``path[d]`` must end up in slot d
(slots 0..a right after the prefix); the rest of the window is free again
(SGLang reuses the reserved slots next step). Moving is done with SGLang's
``move_kv_cache`` (its all-layer Triton copy, safe when sources and targets
overlap). A chain's path is the identity, so it moves nothing; nor does
the root alone (an undrafted step).
"""

from __future__ import annotations

import torch


def path_rows(path: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Flat verify-row index of each accepted node, [bs, D+1] (the root's row past the path)."""
    bs = path.shape[0]
    return torch.arange(bs, device=path.device)[:, None] * num_nodes + path.clamp(min=0)


def compaction_plan(slots: torch.Tensor, path: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, sources), each [bs * (D+1)]: slot d receives the KV of node path[d].

    slots [bs, >= N] are the window's KV ids; past the accepted path a slot
    is copied onto itself (fixed shapes, no host sync).
    """
    depth = torch.arange(path.shape[1], device=path.device).expand_as(path)
    source_node = torch.where(path >= 0, path, depth)
    targets = slots[:, : path.shape[1]]
    return targets.reshape(-1), slots.gather(1, source_node).reshape(-1)


def compact_kv(kv_pool, slots: torch.Tensor, path: torch.Tensor, topk: int) -> None:
    if topk == 1 or path.shape[1] == 1:  # a chain, or the root alone: already in place
        return
    targets, sources = compaction_plan(slots, path)
    kv_pool.move_kv_cache(targets, sources)
