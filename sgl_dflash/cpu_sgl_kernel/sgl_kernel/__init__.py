"""CPU stand-in for ``sgl_kernel`` (the PyPI wheel is CUDA-only).

SGLang's CPU engine imports a few ``*_cpu`` ops from ``sgl_kernel`` at module
level. This module provides plain-torch versions of the ones plain serving and
DFlash call, and a clear error for everything else. It is put on ``sys.path``
(and ``PYTHONPATH`` for SGLang's subprocesses) only in CPU mode; see
``sgl_dflash.cpu_support``.
"""

from __future__ import annotations

import ctypes

import torch

__version__ = "0.0.0+sgl_dflash_cpu"


def _spans(start: torch.Tensor, end: torch.Tensor) -> list[tuple[int, int, int]]:
    """(kv_start, kv_end, offset into the packed locs) per request."""
    out, off = [], 0
    for s, e in zip(start.tolist(), end.tolist()):
        out.append((s, e, off))
        off += e - s
    return out


def assign_req_to_token_pool_cpu(
    req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len
) -> None:
    """req_to_token[rpi[i], start[i]:end[i]] = packed out_cache_loc span i."""
    for row, (s, e, off) in zip(req_pool_indices.tolist(), _spans(start_offset, end_offset)):
        req_to_token[row, s:e] = out_cache_loc[off : off + e - s].to(req_to_token.dtype)


def assign_extend_cache_locs_cpu(
    req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len
) -> None:
    """Packed out_cache_loc span i = req_to_token[rpi[i], start[i]:end[i]]."""
    for row, (s, e, off) in zip(req_pool_indices.tolist(), _spans(start_offset, end_offset)):
        out_cache_loc[off : off + e - s] = req_to_token[row, s:e].to(out_cache_loc.dtype)


def copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt_loc, src_loc) -> None:
    """Copy KV rows src_loc -> tgt_loc in every buffer (raw pointers, byte strides)."""
    src = src_loc.tolist()
    tgt = tgt_loc.tolist()
    for base, stride in zip(data_ptrs.tolist(), strides.tolist()):
        rows = [ctypes.string_at(base + s * stride, stride) for s in src]  # read all first: in-place safe
        for t, row in zip(tgt, rows):
            ctypes.memmove(base + t * stride, row, stride)


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)

    def _unavailable(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} is not available on CPU (sgl-dflash provides only the ops "
            "that plain serving and SGL_DFLASH use). This SGLang feature needs a GPU."
        )

    _unavailable.__name__ = name
    return _unavailable
