"""CUDA stand-in for ``sgl_kernel``, for GPU machines that cannot install the real wheel.

The real ``sglang-kernel`` wheel is 373 MB and built for one torch version; the
lent GPU machines have another torch and no package registry. SGLang's CUDA path
for a dense Qwen3/Llama model with ``--attention-backend flashinfer`` calls only
the ops below, which FlashInfer provides with the same signatures (the real
``sgl_kernel`` itself routes its norms to FlashInfer when it can). Tensors on any
other device take the plain-torch path, which is what the tests check on CPU.

Names that SGLang imports at module level but never calls on that path raise
``NotImplementedError`` naming the op when called; any other name raises
``AttributeError`` (so ``from sgl_kernel import X`` fails at import, loudly, and
guarded imports take their fallback). ``launch/gpu_env.sh`` puts this directory on
``PYTHONPATH``; see also ``sgl_dflash.cpu_support`` for the CPU engine's stand-in.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

__version__ = "0.0.0+sgl_dflash_cuda"


def _flashinfer(x: torch.Tensor, module: str):
    """FlashInfer's module for a CUDA tensor it takes, else None (plain torch then).

    Its norm and activation kernels take fp16/bf16 only (as the real sgl_kernel, which routes
    only those dtypes to FlashInfer); its sampling kernels take any float.
    """
    if x.device.type != "cuda" or (module != "sampling" and x.dtype not in (torch.float16, torch.bfloat16)):
        return None
    import importlib

    return importlib.import_module(f"flashinfer.{module}")


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def _norm(name: str, offset: float) -> Callable:
    """rmsnorm (offset 0) or gemma_rmsnorm (offset 1): out = input / RMS(input) * (weight + offset)."""

    def op(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
           out: Optional[torch.Tensor] = None, enable_pdl: Optional[bool] = None) -> torch.Tensor:
        if (fi := _flashinfer(input, "norm")) is not None:
            return getattr(fi, name)(input, weight, eps, out, enable_pdl)
        y = _rms(input, weight.float() + offset, eps)
        return y if out is None else out.copy_(y)

    op.__name__ = op.__qualname__ = name
    op.__doc__ = _norm.__doc__
    return op


def _fused_add_norm(name: str, offset: float) -> Callable:
    """In place: residual += input; input = residual / RMS(residual) * (weight + offset)."""

    def op(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
           eps: float = 1e-6, enable_pdl: Optional[bool] = None) -> None:
        if (fi := _flashinfer(input, "norm")) is not None:
            return getattr(fi, name)(input, residual, weight, eps, enable_pdl)
        residual.add_(input)
        input.copy_(_rms(residual, weight.float() + offset, eps))

    op.__name__ = op.__qualname__ = name
    op.__doc__ = _fused_add_norm.__doc__
    return op


rmsnorm, gemma_rmsnorm = _norm("rmsnorm", 0.0), _norm("gemma_rmsnorm", 1.0)
fused_add_rmsnorm = _fused_add_norm("fused_add_rmsnorm", 0.0)
gemma_fused_add_rmsnorm = _fused_add_norm("gemma_fused_add_rmsnorm", 1.0)


def _gated(name: str, act: Callable) -> Callable:
    def op(input: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (fi := _flashinfer(input, "activation")) is not None:
            return getattr(fi, name)(input, out)
        d = input.shape[-1] // 2
        y = (act(input[..., :d].float()) * input[..., d:].float()).to(input.dtype)
        return y if out is None else out.copy_(y)

    op.__name__ = name
    op.__doc__ = f"{name}(x) = act(x[..., :d]) * x[..., d:], d = last dim / 2."
    return op


silu_and_mul = _gated("silu_and_mul", F.silu)
gelu_and_mul = _gated("gelu_and_mul", F.gelu)
gelu_tanh_and_mul = _gated("gelu_tanh_and_mul", lambda x: F.gelu(x, approximate="tanh"))


def _per_row(value: Union[torch.Tensor, int, float], probs: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(probs.device).reshape(-1, 1)
    return torch.full((probs.shape[0], 1), value, device=probs.device)


def top_k_renorm_prob(probs: torch.Tensor, top_k: Union[torch.Tensor, int]) -> torch.Tensor:
    """Keep each row's top_k probabilities (ties at the k-th value kept), renormalized."""
    if (fi := _flashinfer(probs, "sampling")) is not None:
        return fi.top_k_renorm_probs(probs, top_k)
    probs = probs.float()
    k = _per_row(top_k, probs).long().clamp(1, probs.shape[-1])
    kth = probs.sort(-1, descending=True).values.gather(-1, k - 1)
    kept = torch.where(probs >= kth, probs, 0.0)
    return kept / kept.sum(-1, keepdim=True)


def top_p_renorm_prob(probs: torch.Tensor, top_p: Union[torch.Tensor, float]) -> torch.Tensor:
    """Keep each row's smallest highest-probability set whose mass reaches top_p, renormalized."""
    if (fi := _flashinfer(probs, "sampling")) is not None:
        return fi.top_p_renorm_probs(probs, top_p)
    probs = probs.float()
    p = _per_row(top_p, probs).float()
    sorted_probs, order = probs.sort(-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    kept_sorted = torch.where(mass_before < p, sorted_probs, 0.0)
    kept = torch.zeros_like(probs).scatter_(-1, order, kept_sorted)
    return kept / kept.sum(-1, keepdim=True)


top_k_renorm_probs, top_p_renorm_probs = top_k_renorm_prob, top_p_renorm_prob


def not_provided(module: str, name: str):
    """A stub for a name SGLang imports at module level but does not call on our path."""

    def stub(*args, **kwargs):
        raise NotImplementedError(
            f"{module}.{name} is not provided by sgl-dflash's CUDA stand-in for sgl_kernel: this "
            "SGLang feature needs the real sglang-kernel wheel (the stand-in covers dense "
            "Qwen3/Llama serving with --attention-backend flashinfer)."
        )

    stub.__name__ = name
    return stub


# Imported at module level on SGLang's CUDA path (quantization and MoE layers), never called for a
# dense bf16/fp32 model.
int8_scaled_mm = not_provided(__name__, "int8_scaled_mm")
moe_sum = not_provided(__name__, "moe_sum")
moe_sum_reduce = not_provided(__name__, "moe_sum_reduce")


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        f"sgl_kernel.{name} is not provided by sgl-dflash's CUDA stand-in for sgl_kernel "
        "(sgl_dflash/cuda_sgl_kernel): install the real sglang-kernel wheel for this feature."
    )
