"""Walk a verified draft tree: the longest path the target agrees with.

``choices[b, i]`` is the token the target emits after node i of request b
(its argmax, or its sample at that node). From the root, descend to the
child whose token equals the current node's choice while one exists; the
children of a node are distinct tokens, so the walk is unique. Outputs:
``accept_len [bs]`` (drafted tokens kept = depth of the last node) and
``path [bs, D+1]`` (node index at each depth, -1 past the last node).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def tree_accept_torch(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    depths: torch.Tensor,
    choices: torch.Tensor,
    ancestors: torch.Tensor,
    path_table: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch reference (and the CPU path), with no loop over the tree.

    A node is on the walk iff every node on its path (root excluded) is the
    choice of its parent; the walk ends at the deepest such node.
    ``ancestors [bs, N, N]``: j is an ancestor-or-self of i; ``path_table
    [bs, N, D+1]``: the ancestor of i at each depth (-1 below i).
    """
    bs = tokens.shape[0]
    agreed = tokens == choices.gather(1, parents.clamp(min=0))
    agreed[:, 0] = True
    on_walk = ~(ancestors & ~agreed[:, None, :]).any(dim=-1)
    last = torch.where(on_walk, depths, -1).argmax(dim=1)
    accept_len = depths.gather(1, last[:, None]).squeeze(1).to(torch.int32)
    path = path_table[torch.arange(bs, device=tokens.device), last]
    return accept_len, path


@triton.jit
def _tree_accept_kernel(
    tokens_ptr,
    parents_ptr,
    choices_ptr,
    accept_len_ptr,
    path_ptr,
    N: tl.constexpr,
    N_POW2: tl.constexpr,
    MAX_DEPTH: tl.constexpr,
):
    row = tl.program_id(0)
    nodes = tl.arange(0, N_POW2)
    valid = nodes < N
    tokens = tl.load(tokens_ptr + row * N + nodes, mask=valid, other=-1)
    parents = tl.load(parents_ptr + row * N + nodes, mask=valid, other=-2)
    path_row = path_ptr + row * (MAX_DEPTH + 1)
    tl.store(path_row, 0)
    cur = 0
    length = 0
    walking = 1
    for depth in range(1, MAX_DEPTH + 1):
        choice = tl.load(choices_ptr + row * N + cur)
        hit = (parents == cur) & (tokens == choice) & valid & (walking == 1)
        found = tl.max(hit.to(tl.int32), axis=0)
        nxt = tl.sum(tl.where(hit, nodes, 0), axis=0)
        cur = tl.where(found == 1, nxt, cur)
        length = length + found
        walking = walking * found
        tl.store(path_row + depth, tl.where(found == 1, nxt, -1))
    tl.store(accept_len_ptr + row, length)


def tree_accept_triton(
    tokens: torch.Tensor, parents: torch.Tensor, choices: torch.Tensor, max_depth: int
) -> tuple[torch.Tensor, torch.Tensor]:
    bs, n = tokens.shape
    accept_len = torch.empty(bs, dtype=torch.int32, device=tokens.device)
    path = torch.empty(bs, max_depth + 1, dtype=torch.long, device=tokens.device)
    if bs:
        _tree_accept_kernel[(bs,)](
            tokens.long().contiguous(), parents.long().contiguous(), choices.long().contiguous(),
            accept_len, path, N=n, N_POW2=triton.next_power_of_2(n), MAX_DEPTH=max_depth,
        )
    return accept_len, path
