"""Per-node tables of a built tree (kernels.tree_build), read by the verify and accept stages.

For node i of each request (``N`` nodes, max depth ``D``):

* ``path_table [bs, N, D+1]`` int64: i's ancestor at each depth, i itself at its own depth, -1 below i;
* ``ancestors [bs, N, N]`` bool: j is i or one of its ancestors;
* ``is_top1 [bs, N]`` bool: i's token is its position's most likely draft (the root: True);
* ``positions [bs, N]`` int64: prefix_len + depth.

The torch reference (the CPU path) walks all nodes up one level at a time, about five
launches per level. The Triton kernel gives each node a program that walks its own path
in registers: one launch, which matters on a GPU, where these run eagerly between the
captured draft and verify graphs and every launch costs host time (bench/gpu_tree_overhead.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

Tables = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # path_table, ancestors, is_top1, positions


def tree_tables_torch(
    tokens: torch.Tensor, parents: torch.Tensor, depths: torch.Tensor,
    top1_ids: torch.Tensor, prefix_lens: torch.Tensor, max_depth: int,
) -> Tables:
    """tokens/parents/depths [bs, N]; top1_ids [bs, P]: each block position's most likely draft."""
    bs, n = parents.shape
    table = torch.full((bs, n, max_depth + 2), -1, dtype=torch.long, device=parents.device)
    node = torch.arange(n, device=parents.device).expand(bs, n)
    up = parents.clamp(min=0)
    for step in range(max_depth + 1):  # walk up one level at a time
        depth = depths - step
        column = torch.where(depth >= 0, depth, max_depth + 1)  # the spare column absorbs the rest
        table.scatter_(2, column[..., None], node[..., None])
        node = up.gather(1, node)
    path_table = table[..., : max_depth + 1]
    # j is an ancestor-or-self of i iff i's ancestor at depth(j) is j.
    at_depth_of_j = path_table.gather(2, depths[:, None, :].expand(-1, n, -1))
    ancestors = at_depth_of_j == torch.arange(n, device=parents.device)
    is_top1 = (tokens == top1_ids.gather(1, (depths - 1).clamp(min=0))) | (depths == 0)
    return path_table, ancestors, is_top1, prefix_lens.long()[:, None] + depths


@triton.jit
def _tree_tables_kernel(
    tokens_ptr, parents_ptr, depths_ptr, top1_ptr, prefix_ptr,
    path_ptr, ancestors_ptr, is_top1_ptr, positions_ptr,
    P: tl.constexpr, N: tl.constexpr, D1: tl.constexpr, N_POW2: tl.constexpr, D_POW2: tl.constexpr,
):
    """One program per (request, node): walk up from the node, at most D1 nodes."""
    b = tl.program_id(0)
    i = tl.program_id(1)
    row = b * N
    at_depth = tl.arange(0, D_POW2)
    at_node = tl.arange(0, N_POW2)
    path = tl.full([D_POW2], -1, tl.int64)
    is_anc = tl.zeros([N_POW2], tl.uint8)
    node = tl.full([], 0, tl.int64) + i
    for _ in range(D1):
        valid = node >= 0
        safe = tl.maximum(node, 0)
        depth = tl.load(depths_ptr + row + safe)
        path = tl.where(valid & (at_depth == depth), node, path)
        is_anc = tl.where(valid & (at_node == node), 1, is_anc).to(tl.uint8)
        node = tl.where(valid, tl.load(parents_ptr + row + safe), -1)
    tl.store(path_ptr + (row + i) * D1 + at_depth, path, mask=at_depth < D1)
    tl.store(ancestors_ptr + (row + i) * N + at_node, is_anc, mask=at_node < N)
    depth = tl.load(depths_ptr + row + i)
    top1 = tl.load(top1_ptr + b * P + tl.maximum(depth - 1, 0))
    tl.store(is_top1_ptr + row + i, ((tl.load(tokens_ptr + row + i) == top1) | (depth == 0)).to(tl.uint8))
    tl.store(positions_ptr + row + i, tl.load(prefix_ptr + b).to(tl.int64) + depth)


def tree_tables_triton(
    tokens: torch.Tensor, parents: torch.Tensor, depths: torch.Tensor,
    top1_ids: torch.Tensor, prefix_lens: torch.Tensor, max_depth: int,
) -> Tables:
    bs, n = parents.shape
    device = parents.device
    path_table = torch.empty(bs, n, max_depth + 1, dtype=torch.long, device=device)
    ancestors = torch.empty(bs, n, n, dtype=torch.bool, device=device)
    is_top1 = torch.empty(bs, n, dtype=torch.bool, device=device)
    positions = torch.empty(bs, n, dtype=torch.long, device=device)
    if bs:
        # Bool outputs are written as bytes through uint8 views (0/1, what torch.bool stores).
        _tree_tables_kernel[(bs, n)](
            tokens.contiguous(), parents.contiguous(), depths.contiguous(), top1_ids.long().contiguous(),
            prefix_lens.contiguous(), path_table, ancestors.view(torch.uint8), is_top1.view(torch.uint8), positions,
            P=top1_ids.shape[1], N=n, D1=max_depth + 1,
            N_POW2=triton.next_power_of_2(n), D_POW2=triton.next_power_of_2(max_depth + 1),
        )
    return path_table, ancestors, is_top1, positions


def tree_tables(
    tokens: torch.Tensor, parents: torch.Tensor, depths: torch.Tensor,
    top1_ids: torch.Tensor, prefix_lens: torch.Tensor, max_depth: int,
) -> Tables:
    if parents.is_cuda:
        return tree_tables_triton(tokens, parents, depths, top1_ids, prefix_lens, max_depth)
    return tree_tables_torch(tokens, parents, depths, top1_ids, prefix_lens, max_depth)
