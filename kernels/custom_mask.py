"""The verify pass's flat custom mask (SGLang's EAGLE tree-verify format, read by FlashInfer).

Per request, row-major ``[N, prefix_len + N]`` booleans, True = the query may attend to
that key: every prefix key, then the node's row of ``ancestors`` (itself and its
ancestors); requests concatenated. The torch reference builds it with a handful of
whole-mask ops; the Triton kernel writes each row in one program (one launch: on a GPU
this runs eagerly before the verify graph, where launches cost host time).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def custom_mask_torch(ancestors: torch.Tensor, prefix_lens: torch.Tensor, total: int) -> torch.Tensor:
    """ancestors [bs, N, N] bool, prefix_lens [bs] -> [total = sum_b N * (prefix_len_b + N)] bool."""
    bs, n, _ = ancestors.shape
    device = ancestors.device
    row_lens = (prefix_lens.long() + n).repeat_interleave(n)  # [bs * N] keys per query row
    row_starts = row_lens.cumsum(0) - row_lens
    row = torch.repeat_interleave(torch.arange(bs * n, device=device), row_lens, output_size=total)
    col = torch.arange(total, device=device) - row_starts[row]
    in_tree = col - prefix_lens.long().repeat_interleave(n)[row]  # key's node index, < 0 in the prefix
    return (in_tree < 0) | ancestors.reshape(bs * n, n)[row, in_tree.clamp(min=0)]


@triton.jit
def _custom_mask_kernel(
    ancestors_ptr, prefix_ptr, out_ptr,
    N: tl.constexpr, N_POW2: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program per (request, node row)."""
    b = tl.program_id(0)
    i = tl.program_id(1)
    lanes = tl.arange(0, BLOCK)
    before = tl.zeros([BLOCK], tl.int64)  # prefix lengths of the requests before b, summed lane-wise
    for c in range(0, b, BLOCK):
        before += tl.load(prefix_ptr + c + lanes, mask=c + lanes < b, other=0).to(tl.int64)
    prefix = tl.load(prefix_ptr + b).to(tl.int32)
    start = N * (tl.sum(before, axis=0) + b * N) + i * (prefix.to(tl.int64) + N)
    for c in range(0, prefix, BLOCK):
        tl.store(out_ptr + start + c + lanes, tl.full([BLOCK], 1, tl.uint8), mask=c + lanes < prefix)
    nodes = tl.arange(0, N_POW2)
    row = tl.load(ancestors_ptr + (b * N + i) * N + nodes, mask=nodes < N, other=0)
    tl.store(out_ptr + start + prefix + nodes, row, mask=nodes < N)


def custom_mask_triton(ancestors: torch.Tensor, prefix_lens: torch.Tensor, total: int) -> torch.Tensor:
    bs, n, _ = ancestors.shape
    out = torch.empty(total, dtype=torch.bool, device=ancestors.device)
    if bs:
        # Bools travel as bytes through uint8 views (0/1, what torch.bool stores).
        _custom_mask_kernel[(bs, n)](
            ancestors.contiguous().view(torch.uint8), prefix_lens.contiguous(), out.view(torch.uint8),
            N=n, N_POW2=triton.next_power_of_2(n), BLOCK=1024,
        )
    return out


def custom_mask(ancestors: torch.Tensor, prefix_lens: torch.Tensor, total: int) -> torch.Tensor:
    if ancestors.is_cuda:
        return custom_mask_triton(ancestors, prefix_lens, total)
    return custom_mask_torch(ancestors, prefix_lens, total)
