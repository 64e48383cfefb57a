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

from sgl_dflash.step import DraftTree


def tree_custom_mask(tree: DraftTree, prefix_lens: torch.Tensor, total: int) -> torch.Tensor:
    """Flat bool mask of ``total = sum_b N * (prefix_len_b + N)`` entries."""
    bs, n = tree.tokens.shape
    device = tree.tokens.device
    row_lens = (prefix_lens.long() + n).repeat_interleave(n)  # [bs * N] keys per query row
    row_starts = row_lens.cumsum(0) - row_lens
    row = torch.repeat_interleave(torch.arange(bs * n, device=device), row_lens, output_size=total)
    col = torch.arange(total, device=device) - row_starts[row]
    in_tree = col - prefix_lens.long().repeat_interleave(n)[row]  # key's node index, < 0 in the prefix
    ancestors = tree.ancestors.reshape(bs * n, n)
    return (in_tree < 0) | ancestors[row, in_tree.clamp(min=0)]


def verify_mask(
    tree: DraftTree, topk: int, prefix_lens: torch.Tensor, prefix_sum: int
) -> Optional[torch.Tensor]:
    """The custom mask for a verify pass, or None where the tree is a chain (causal): top-K 1,
    or the root alone (an undrafted step)."""
    if topk == 1 or tree.num_nodes == 1:
        return None
    n = tree.num_nodes
    return tree_custom_mask(tree, prefix_lens, n * prefix_sum + n * n * tree.tokens.shape[0])
