"""Verify stage's attention mask: each node sees the whole prefix and its own ancestors.

SGLang's custom-mask format (EAGLE tree verify; FlashInfer and the CPU path
read it): per request, row-major ``[N, prefix_len + N]`` booleans, True =
the query may attend to that key; requests concatenated. A chain's ancestor
mask is the causal mask, so K = 1 passes no custom mask and backends use
their causal path (the same mask, cheaper and graph-friendly).
"""

from __future__ import annotations

from typing import Optional

import torch

from sgl_dflash.kernels.custom_mask import custom_mask
from sgl_dflash.step import DraftTree


def tree_custom_mask(tree: DraftTree, prefix_lens: torch.Tensor, total: int) -> torch.Tensor:
    """Flat bool mask of ``total = sum_b N * (prefix_len_b + N)`` entries (kernels.custom_mask)."""
    return custom_mask(tree.ancestors, prefix_lens, total)


def verify_mask(
    tree: DraftTree, topk: int, prefix_lens: torch.Tensor, prefix_sum: int
) -> Optional[torch.Tensor]:
    """The custom mask for a verify pass, or None where the tree is a chain (causal): top-K 1,
    or the root alone (an undrafted step)."""
    if topk == 1 or tree.num_nodes == 1:
        return None
    n = tree.num_nodes
    return tree_custom_mask(tree, prefix_lens, n * prefix_sum + n * n * tree.tokens.shape[0])
