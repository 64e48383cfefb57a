"""Best-first draft tree from a DFlash block's per-position top-K.

One DFlash pass gives, at every block position j >= 1, a distribution over
the token at depth j. A node at depth j is a choice of one of position j's
top-K tokens for each depth 1..j; its score is the product of the drafter
probabilities along its path, the drafter's estimate of the chance that the
target accepts the whole path. The tree keeps the root (the bonus token) and
the ``num_nodes - 1`` best nodes under the total order

    score descending, then depth ascending, then parent's rank, then K-rank

(the tie-breaks make every implementation pick the same tree). Scores never
grow along a path or along a sorted sibling list, so the chosen set is
closed under parents and previous siblings: it is exactly what best-first
expansion picks (pop the best frontier node, push its first child and its
next sibling). Nodes come out in that order, so a parent always precedes
its children. K = 1 gives the chain of the first ``num_nodes - 1`` drafts.

Inputs: ``root [bs]``, ``topk_ids [bs, P, K]`` and ``topk_probs [bs, P, K]``
for block positions 1..P (sorted by probability, descending). Outputs, all
``[bs, N]``: ``tokens`` (node 0 = root), ``parents`` (-1 for the root),
``depths``, ``scores`` (root 1.0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def max_tree_nodes(topk: int, positions: int, num_nodes: int) -> int:
    """How many nodes a tree can really have: min(N, 1 + sum over depths of K^d)."""
    depth = min(positions, num_nodes - 1)
    reachable, level = 0, 1
    for _ in range(depth):
        level = min(level * topk, num_nodes)
        reachable += level
        if reachable >= num_nodes - 1:
            break
    return 1 + min(num_nodes - 1, reachable)


def build_tree_torch(
    root: torch.Tensor, topk_ids: torch.Tensor, topk_probs: torch.Tensor, num_nodes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain-torch reference (and the CPU path): level by level, then one merge.

    The best M = N-1 nodes at depth d have their parents among the best M at
    depth d-1, so each level keeps its best M candidates (children of the
    previous level's kept nodes, in (parent rank, K-rank) order, stably
    sorted by score); a stable sort of all levels, concatenated by depth,
    then yields the tree's order.
    """
    bs, positions, k = topk_ids.shape
    m = num_nodes - 1
    if max_tree_nodes(k, positions, num_nodes) != num_nodes:
        raise ValueError(f"{num_nodes} nodes do not fit a tree of top-{k} over {positions} positions")
    device = root.device
    minus_one = torch.full((bs, 1), -1, dtype=torch.long, device=device)
    if m == 0:  # the root alone: a plain decode step
        return root.long()[:, None], minus_one, minus_one + 1, torch.ones(bs, 1, device=device)
    level_scores = torch.ones(bs, 1, dtype=topk_probs.dtype, device=device)
    scores, parent_rank, tokens, depth_of = [], [], [], []
    for d in range(1, min(positions, m) + 1):
        cand = (level_scores[:, :, None] * topk_probs[:, d - 1, None, :]).reshape(bs, -1)
        keep = min(m, cand.shape[1])
        cand, order = cand.sort(dim=1, descending=True, stable=True)
        level_scores, order = cand[:, :keep], order[:, :keep]
        scores.append(level_scores)
        parent_rank.append(order // k)
        tokens.append(topk_ids[:, d - 1].gather(1, order % k))
        depth_of.append(torch.full((keep,), d, dtype=torch.long, device=device))

    # Concatenated layout: index 0 is the root, then level 1, level 2, ...
    sizes = [s.shape[1] for s in scores]
    offsets = torch.tensor([0, 1] + sizes, device=device).cumsum(0)[:-1]  # start of level d at [d]
    all_scores = torch.cat(scores, dim=1)
    chosen = all_scores.sort(dim=1, descending=True, stable=True).indices[:, :m] + 1  # [bs, M]
    all_depths = torch.cat([torch.zeros(1, dtype=torch.long, device=device), *depth_of])
    parent_cat = torch.cat(
        [torch.zeros(bs, 1, dtype=torch.long, device=device)]
        + [offsets[d - 1] + r for d, r in enumerate(parent_rank, start=1)],
        dim=1,
    )
    final = torch.zeros(bs, all_depths.numel(), dtype=torch.long, device=device)
    final.scatter_(1, chosen, torch.arange(1, m + 1, device=device).expand(bs, m))

    out_tokens = torch.cat([root.long()[:, None], torch.cat(tokens, dim=1).gather(1, chosen - 1)], dim=1)
    out_parents = torch.cat([minus_one, final.gather(1, parent_cat.gather(1, chosen))], dim=1)
    out_depths = torch.cat([minus_one + 1, all_depths[chosen]], dim=1)
    out_scores = torch.cat([torch.ones_like(minus_one, dtype=all_scores.dtype), all_scores.gather(1, chosen - 1)], dim=1)
    return out_tokens, out_parents, out_depths, out_scores


@triton.jit
def _build_tree_kernel(
    root_ptr,
    ids_ptr,
    probs_ptr,
    tokens_ptr,
    parents_ptr,
    depths_ptr,
    scores_ptr,
    P: tl.constexpr,
    K: tl.constexpr,
    N: tl.constexpr,
    MAX_DEPTH: tl.constexpr,
    N_POW2: tl.constexpr,
):
    """Best-first expansion for one request; the frontier lives in registers."""
    row = tl.program_id(0)
    slots = tl.arange(0, N_POW2)
    ids_row = ids_ptr + row * P * K
    probs_row = probs_ptr + row * P * K
    out = row * N

    root = tl.load(root_ptr + row)
    tl.store(tokens_ptr + out, root)
    tl.store(parents_ptr + out, -1)
    tl.store(depths_ptr + out, 0)
    tl.store(scores_ptr + out, 1.0)

    # Frontier slot: score (-1 = empty), depth, parent node, K-rank, parent's score.
    f_score = tl.where(slots == 0, tl.load(probs_row), -1.0)
    f_depth = tl.where(slots == 0, 1, 0)
    f_parent = tl.zeros([N_POW2], dtype=tl.int32)
    f_rank = tl.zeros([N_POW2], dtype=tl.int32)
    f_pscore = tl.where(slots == 0, 1.0, 0.0)
    used = 1
    for node in range(1, N):
        best = tl.max(f_score, axis=0)
        tie = f_score == best
        d_min = tl.min(tl.where(tie, f_depth, N), axis=0)
        tie = tie & (f_depth == d_min)
        code = f_parent * K + f_rank
        c_min = tl.min(tl.where(tie, code, N * K), axis=0)
        sel = tie & (code == c_min)
        depth = d_min
        parent = tl.sum(tl.where(sel, f_parent, 0), axis=0)
        rank = tl.sum(tl.where(sel, f_rank, 0), axis=0)
        pscore = tl.sum(tl.where(sel, f_pscore, 0.0), axis=0)
        token = tl.load(ids_row + (depth - 1) * K + rank)
        tl.store(tokens_ptr + out + node, token)
        tl.store(parents_ptr + out + node, parent)
        tl.store(depths_ptr + out + node, depth)
        tl.store(scores_ptr + out + node, best)
        # The popped slot becomes this node's first child, if it may have one.
        has_child = depth < MAX_DEPTH
        child_p = tl.load(probs_row + tl.minimum(depth, P - 1) * K)
        f_score = tl.where(sel, tl.where(has_child, best * child_p, -1.0), f_score)
        f_depth = tl.where(sel, depth + 1, f_depth)
        f_parent = tl.where(sel, node, f_parent)
        f_rank = tl.where(sel, 0, f_rank)
        f_pscore = tl.where(sel, best, f_pscore)
        # The next sibling goes into a fresh slot.
        has_sib = rank + 1 < K
        sib_p = tl.load(probs_row + (depth - 1) * K + tl.minimum(rank + 1, K - 1))
        fresh = (slots == used) & has_sib
        f_score = tl.where(fresh, pscore * sib_p, f_score)
        f_depth = tl.where(fresh, depth, f_depth)
        f_parent = tl.where(fresh, parent, f_parent)
        f_rank = tl.where(fresh, rank + 1, f_rank)
        f_pscore = tl.where(fresh, pscore, f_pscore)
        used = used + has_sib.to(tl.int32)


def build_tree_triton(
    root: torch.Tensor, topk_ids: torch.Tensor, topk_probs: torch.Tensor, num_nodes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    bs, positions, k = topk_ids.shape
    if max_tree_nodes(k, positions, num_nodes) != num_nodes:
        raise ValueError(f"{num_nodes} nodes do not fit a tree of top-{k} over {positions} positions")
    device = root.device
    tokens = torch.empty(bs, num_nodes, dtype=torch.long, device=device)
    parents = torch.empty_like(tokens)
    depths = torch.empty_like(tokens)
    scores = torch.empty(bs, num_nodes, dtype=torch.float32, device=device)
    if bs:
        _build_tree_kernel[(bs,)](
            root.long().contiguous(), topk_ids.long().contiguous(), topk_probs.float().contiguous(),
            tokens, parents, depths, scores,
            P=positions, K=k, N=num_nodes, MAX_DEPTH=min(positions, num_nodes - 1),
            N_POW2=triton.next_power_of_2(num_nodes + 1),
        )
    return tokens, parents, depths, scores


def build_tree(
    root: torch.Tensor, topk_ids: torch.Tensor, topk_probs: torch.Tensor, num_nodes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if root.is_cuda:
        return build_tree_triton(root, topk_ids, topk_probs, num_nodes)
    return build_tree_torch(root, topk_ids, topk_probs, num_nodes)
