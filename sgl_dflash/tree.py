"""Draft stage: from the drafter's block hidden states to the tree to verify.

``DraftTopKHead`` turns the hidden states of block positions 1..B-1 into each
position's top-K tokens and probabilities (through the target's lm_head, as
DFlash drafters have none); on GPU it runs inside the captured draft graph.
``make_tree`` builds the best-first tree (kernels.tree_build) and the tables
every later stage reads (kernels.tree_tables).
"""

from __future__ import annotations

import torch

from sgl_dflash.kernels.tree_build import build_tree
from sgl_dflash.kernels.tree_tables import tree_tables
from sgl_dflash.step import DraftTree


def draft_topk(hidden: torch.Tensor, lm_head: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [rows, H] -> (ids [rows, K] int64, probs [rows, K] fp32), most likely first."""
    logits = torch.matmul(hidden.to(lm_head.dtype), lm_head.T).float()
    probs, ids = torch.softmax(logits, dim=-1).topk(topk, dim=-1)
    return ids, probs


ROWS_PER_CHUNK = 1024


class DraftTopKHead:
    """Per-position top-K of a draft block, written into fixed buffers.

    Fixed addresses let the head run inside a captured CUDA graph (as SGLang's
    own DFLASH greedy head does); eager callers read the same buffers.
    """

    def __init__(self, lm_head: torch.Tensor, block_size: int, topk: int, max_bs: int) -> None:
        self.lm_head = lm_head
        self.block_size = block_size
        self.topk = topk
        rows = max_bs * (block_size - 1)
        self.ids = torch.zeros(rows, topk, dtype=torch.long, device=lm_head.device)
        self.probs = torch.zeros(rows, topk, dtype=torch.float32, device=lm_head.device)

    def __call__(self, hidden_states: torch.Tensor, input_ids: torch.Tensor | None = None) -> None:
        bs = hidden_states.shape[0] // self.block_size
        hidden = hidden_states[: bs * self.block_size].view(bs, self.block_size, -1)[:, 1:]
        rows = hidden.reshape(-1, hidden.shape[-1])
        # In chunks: a large batch's [rows, vocab] logits at once could take gigabytes.
        for start in range(0, rows.shape[0], ROWS_PER_CHUNK):
            ids, probs = draft_topk(rows[start : start + ROWS_PER_CHUNK], self.lm_head, self.topk)
            self.ids[start : start + ids.shape[0]].copy_(ids)
            self.probs[start : start + probs.shape[0]].copy_(probs)

    def read(self, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, probs), each [bs, B-1, K]."""
        rows = bs * (self.block_size - 1)
        shape = (bs, self.block_size - 1, self.topk)
        return self.ids[:rows].view(shape), self.probs[:rows].view(shape)


def make_tree(
    root: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_probs: torch.Tensor,
    num_nodes: int,
    prefix_lens: torch.Tensor,
) -> DraftTree:
    """root [bs]; topk_ids/topk_probs [bs, B-1, K]; prefix_lens [bs]."""
    tokens, parents, depths, scores = build_tree(root, topk_ids, topk_probs, num_nodes)
    path_table, ancestors, is_top1, positions = tree_tables(
        tokens, parents, depths, topk_ids[:, :, 0], prefix_lens, min(topk_ids.shape[1], num_nodes - 1)
    )
    return DraftTree(
        tokens=tokens,
        parents=parents,
        depths=depths,
        scores=scores,
        is_top1=is_top1,
        positions=positions,
        ancestors=ancestors,
        path_table=path_table,
    )


def grammar_links(tree: DraftTree) -> tuple[torch.Tensor, torch.Tensor]:
    """SGLang's tree encoding for grammar masks: (first child, next sibling), -1 when none."""
    bs, n = tree.parents.shape
    idx = torch.arange(n, device=tree.parents.device)
    child_of = tree.parents[:, None, :] == idx[None, :, None]  # [bs, parent, child]
    first_child = torch.where(child_of.any(-1), child_of.int().argmax(-1), -1)
    # Next sibling: the next node (in order) with the same parent.
    same_parent = (tree.parents[:, :, None] == tree.parents[:, None, :]) & (idx[None, None, :] > idx[None, :, None])
    next_sibling = torch.where(same_parent.any(-1), same_parent.int().argmax(-1), -1)
    return first_child, next_sibling


def root_tree(root: torch.Tensor, prefix_lens: torch.Tensor) -> DraftTree:
    """The tree of a step that verifies the root alone: a plain decode step."""
    placeholder = torch.zeros(root.shape[0], 1, 1, dtype=torch.long, device=root.device)
    return make_tree(root, placeholder, placeholder.float(), 1, prefix_lens)
