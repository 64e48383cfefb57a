"""Inflate a Qwen3 target and its DFlash drafter to a realistic cost without changing what they compute.

The shipped tiny pair is so small that SGLang's per-step overhead dominates
its speed; a benchmark on it says little about speculation. The inflated twin
costs what a real model of its size costs and still produces the same tokens.
Each dimension grows by its own integer factor (``Factors``): hidden size,
attention heads, KV heads, head_dim (padding), MLP intermediate size, and the
target's depth. ``--width W`` grows hidden, heads, KV heads and MLP all W-fold
(head_dim kept); ``--like qwen3-8b`` picks the factors that give Qwen3-8B's
shape (hidden 4096, 32 heads, 8 KV heads, head_dim 128, intermediate 12288,
36 layers; from the shipped pair: 32x, 8x, 4x, pad 4x, 32x, 9x deep).

* hidden x Fh: the new dimensions stay exactly zero (embedding, lm_head and
  every output projection are zero there). RMSNorm over the hidden size then
  sees a mean square Fh times smaller, so its weight is divided by sqrt(Fh)
  and its eps (the config's shared ``rms_norm_eps``) by Fh: the normalized
  values are unchanged. New input-side weights (q/k/v/gate/up columns on the
  zero dimensions) are random: real compute, no effect.
* MLP units x Fi: new units have random input weights and zero ``down_proj``
  columns.
* heads x Fq, KV heads x Fkv (Fkv <= Fq, heads*Fq a multiple of
  kv_heads*Fkv): SGLang and HF give query head h the KV head h // G, G the
  query heads per KV head (G' = G*Fq/Fkv after inflation). Original KV head k
  stays at k; original query head h goes to (h // G) * G' + h % G, the first
  G slots of its own KV head's new group. New heads (and the new query heads
  sharing an original KV head) get random q/k/v rows and zero ``o_proj``
  columns. With Fq = Fkv (``--width``) the originals simply come first.
* head_dim x P (padding): Qwen3 normalizes q and k per head (q_norm/k_norm,
  RMSNorm over head_dim), then applies NeoX rotary: dim i < head_dim/2 pairs
  with i + head_dim/2 at frequency theta^(-2i/head_dim). Original dim i <
  head_dim/2 goes to P*i (the same frequency: 2(P*i)/(P*head_dim) is the same
  rational, so even the float inv_freq is bit-identical) and its partner to
  P*i + P*head_dim/2; the other dims of an original head have zero q/k/v
  rows and zero q_norm/k_norm weight, so they are exactly zero after the norm
  and the rotation, and zero ``o_proj`` columns. The norm's mean square over P
  times the dims is P times smaller, so q and k come out sqrt(P) times larger;
  the softmax scale 1/sqrt(P*head_dim) takes one sqrt(P) back, and k_norm's
  weight divided by sqrt(P) the other (k, the cached value, is unchanged;
  q_norm's weight is kept).
* depth x D (target only): real layer i becomes layer i*D, followed by D-1
  identity layers (random weights except o_proj and down_proj, all zero: they
  add exactly 0 to the residual, in any dtype). The drafter's target layer
  id k (state entering real layer k+1) becomes k*D + D-1, the last identity
  layer before real layer k+1, which spreads the ids through the depth as in
  real DFlash drafts.
* the drafter keeps its depth and gets the same width factors; its ``fc``
  (context of len(target_layer_ids) concatenated hidden states) keeps each
  original block at the start of the matching inflated block.

Exactness. In real arithmetic the twin computes the source's function, with
one exception: q_norm/k_norm share ``rms_norm_eps`` with the hidden norms,
which need it divided by Fh, while a head norm over P-fold padded dims would
need it divided by P. Their effective eps is therefore eps*P/Fh instead of
eps (1/6 of it for the default CPU twin, 1/8 for qwen3-8b). Normalized q
and k move by a relative (eps - eps*P/Fh) / (2 * mean square of the head
before the norm): the shipped target's per-head mean squares on held-out
text are 0.4 (median) down to 0.018, so up to ~3e-5, typically ~1e-6. On
the logits that is 1-2e-4 (they reach ~19); with the head norms' eps set
exactly, the twin matches the source to ~5e-6 even in fp64 (HF's norms run
in fp32). Making it exact would take scaling the original q/k rows by
sqrt(P/Fh) (the norm undoes the scale, eps then lines up); that changes the
established CPU twin's weights (Fh=6, P=1), so it is not done: the effect
is far below what changes a token. Everything else differs only by rounding:
sums over more (zero) terms in another order, norm weights divided by
sqrt(Fh) and sqrt(P) (exact when the factor is a power of 4: qwen3-8b's
k_norm /2 is, its hidden norms' /sqrt(32) rounds). Measured on CPU in fp32 at several
factor mixes: logits within ~2e-4 of the source's, the same greedy tokens,
the same drafts (tests/test_inflate.py).

bf16 (``--dtype bfloat16``, for the GPU) rounds every original weight to bf16
(8 significant bits), as running the shipped pair itself in bf16 would, plus
the hidden norm weights after their division; activations are bf16 too. The
twin then drifts from the fp32 pair about as much as a bf16 run of the
shipped pair does: greedy tokens equal until a near-tie flips one, after
which the continuation differs. Measured on CPU (HF transformers, 16
held-out prompts x 64 greedy tokens, vs the shipped pair in fp32): the
shipped pair in bf16 kept 12/16 continuations identical, 85% of tokens
before the first divergence, prompt logits within 0.2, argmax 99.4%, draft
tokens 98%; bf16 twins (hidden x4 / heads x8 / kv x4 / head_dim x4 / 2x deep,
and x2 / x4 / x2 / x4 / 2x deep) 12/16 and 11/16, 85% and 79%, logits within
0.19-0.22, drafts 98%. Acceptance stays the trained pair's (target and
drafter drift alike). ``--check`` measures this on the machine that built
the pair (the source in fp32 and in the twin's dtype, against the twin).

    sgl-dflash-make-tiny inflate OUT [--width W] [--depth D] [--hidden-factor F] [--heads-factor F]
        [--kv-heads-factor F] [--head-dim-factor P] [--intermediate-factor F]
        [--like qwen3-8b] [--dtype bfloat16] [--device cuda] [--dry-run] [--check]
        [--source-target T --source-draft D]

writes ``OUT/target`` and ``OUT/draft`` (HF / public DFlash formats, fp32 by
default, tokenizer files copied; weights over 4 GiB in shards with an index).
Random weights are drawn on ``--device`` (a GPU makes the qwen3-8b pair in
seconds; writing its 15.5 GB of bf16 takes longer). ``--dry-run`` builds
the pair on PyTorch's meta device (shapes only, no memory) and prints it.
``python -m sgl_dflash.inflate`` takes the same arguments. The qwen3-8b
twin has Qwen3-8B's layers (6.95B parameters in the target, 0.82B in the
4-layer drafter) but the tiny vocabulary (1024 tokens: its lm_head has 4M
parameters where Qwen3-8B's has 622M, so a decode step reads ~92% of
Qwen3-8B's weight bytes) and context (2048 positions).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from sgl_dflash.draft_checkpoint import DraftConfigError, validate_draft

ASSETS = Path(__file__).resolve().parent / "assets"
# Hidden 768, 28 layers (~200M parameters): on 2 CPU cores a decode step costs >10x SGLang's
# per-step overhead, and the 4-layer drafter costs ~1/7 of the target per token, as
# Qwen3-8B's 5-layer drafter under its 36 layers; a full serving benchmark still fits in tens of minutes.
DEFAULT_WIDTH, DEFAULT_DEPTH = 6, 7
RANDOM_STD = 0.02  # new input-side weights: any finite values do; they only cost compute
WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json")
SHARD_BYTES = 4 << 30  # larger checkpoints are written in shards (the CPU twin and drafters stay one file)
# Target shapes for --like (Qwen/Qwen3-8B's config.json); the source's dims must divide them.
PRESETS = {
    "qwen3-8b": {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                 "intermediate_size": 12288, "num_hidden_layers": 36},
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class InflateError(ValueError):
    """A factor or source checkpoint that cannot be inflated; the message says which and why."""


def check_factor(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InflateError(f"--{name} must be an integer >= 1, got {value!r}.")
    return value


@dataclass(frozen=True)
class Factors:
    """How much each dimension grows: hidden size, attention heads, KV heads, head_dim (zero
    padding), MLP intermediate size, and the target's depth."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    depth: int

    # The command-line flag of each field, for messages.
    FLAGS = {"hidden": "hidden-factor", "heads": "heads-factor", "kv_heads": "kv-heads-factor",
             "head_dim": "head-dim-factor", "inter": "intermediate-factor", "depth": "depth"}

    def __post_init__(self) -> None:
        for f in fields(self):
            check_factor(self.FLAGS[f.name], getattr(self, f.name))

    @classmethod
    def uniform(cls, width: int, depth: int) -> "Factors":
        """--width W: hidden, heads, KV heads and MLP W-fold, head_dim kept."""
        width, depth = check_factor("width", width), check_factor("depth", depth)
        return cls(width, width, width, 1, width, depth)

    @classmethod
    def like(cls, name: str, cfg: dict) -> "Factors":
        """The factors that take a source config to preset ``name``'s shape."""
        if name not in PRESETS:
            raise InflateError(f"--like {name!r} is not a preset; presets: {', '.join(sorted(PRESETS))}.")
        want, have = PRESETS[name], {**_dim_fields(Dims.of(cfg)), "num_hidden_layers": cfg["num_hidden_layers"]}
        ratios = {}
        for key, target in want.items():
            if target % have[key]:
                raise InflateError(f"--like {name}: its {key}={target} is not a multiple of the source's "
                                   f"{key}={have[key]}, so no integer factor reaches it.")
            ratios[key] = target // have[key]
        return cls(ratios["hidden_size"], ratios["num_attention_heads"], ratios["num_key_value_heads"],
                   ratios["head_dim"], ratios["intermediate_size"], ratios["num_hidden_layers"])

    def check(self, cfg: dict, where: object) -> None:
        """Can a layer stack of this config grow by these factors and compute the same?"""
        d = Dims.of(cfg)
        if self.kv_heads > self.heads:
            raise InflateError(
                f"{where}: --kv-heads-factor {self.kv_heads} > --heads-factor {self.heads} would leave fewer "
                f"query heads per KV head than the source's {d.heads // d.kv_heads}, splitting its GQA groups "
                "(each original query head must keep its own KV head); use a KV factor <= the heads factor.")
        if (d.heads * self.heads) % (d.kv_heads * self.kv_heads):
            raise InflateError(
                f"{where}: {d.heads} heads x {self.heads} = {d.heads * self.heads} query heads are not a "
                f"multiple of {d.kv_heads} KV heads x {self.kv_heads} = {d.kv_heads * self.kv_heads} (GQA).")
        if self.head_dim > 1 and d.head_dim % 2:
            raise InflateError(f"{where}: head_dim={d.head_dim} is odd; rotary halves cannot be padded.")

    def describe(self) -> str:
        return (f"hidden x{self.hidden}, heads x{self.heads}, kv heads x{self.kv_heads}, "
                f"head_dim x{self.head_dim}, MLP x{self.inter}, {self.depth}x deep")


@dataclass(frozen=True)
class Dims:
    """The shapes one Qwen3 layer stack needs."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int

    @classmethod
    def of(cls, cfg: dict) -> "Dims":
        heads = cfg["num_attention_heads"]
        return cls(cfg["hidden_size"], heads, cfg["num_key_value_heads"],
                   cfg.get("head_dim") or cfg["hidden_size"] // heads, cfg["intermediate_size"])

    def times(self, f: Factors) -> "Dims":
        return Dims(self.hidden * f.hidden, self.heads * f.heads, self.kv_heads * f.kv_heads,
                    self.head_dim * f.head_dim, self.inter * f.inter)


def _dim_fields(d: Dims) -> dict:
    return {"hidden_size": d.hidden, "num_attention_heads": d.heads, "num_key_value_heads": d.kv_heads,
            "head_dim": d.head_dim, "intermediate_size": d.inter}


class _Layout:
    """Where the original attention rows land: q/k/v rows, o_proj columns, q_norm/k_norm entries."""

    def __init__(self, d: Dims, f: Factors) -> None:
        self.src = d
        self.big = big = d.times(f)
        half, big_half = d.head_dim // 2, big.head_dim // 2
        # Dim i keeps its rotary frequency and its rotate_half partner (see the module docstring).
        self.dims = torch.tensor([i if f.head_dim == 1 else f.head_dim * (i % half) + (i // half) * big_half
                                  for i in range(d.head_dim)])
        group, big_group = d.heads // d.kv_heads, big.heads // big.kv_heads
        self.q, self.q_heads = self._rows([(h // group) * big_group + h % group for h in range(d.heads)])
        self.kv, self.kv_heads = self._rows(list(range(d.kv_heads)))

    def _rows(self, heads: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(new row of each original row in order, every row of those heads)."""
        hd = self.big.head_dim
        starts = torch.tensor(heads)[:, None] * hd
        return (starts + self.dims).flatten(), (starts + torch.arange(hd)).flatten()


def _read(path: Path, what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise InflateError(f"source {what} {path} has no config.json.")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise InflateError(f"source {what} {path} has no .safetensors weights.")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return json.loads(cfg_file.read_text()), {k: v.float() for k, v in tensors.items()}


def _check_qwen3(cfg: dict, where: Path) -> None:
    archs = cfg.get("architectures") or []
    if archs != ["Qwen3ForCausalLM"] or cfg.get("model_type") != "qwen3":
        raise InflateError(
            f"{where}: inflate supports Qwen3 targets only (architectures ['Qwen3ForCausalLM']), "
            f"got architectures {archs} and model_type {cfg.get('model_type')!r}."
        )
    _check_layers(cfg, where)


def _check_layers(cfg: dict, where: Path) -> None:
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise InflateError(f"{where}: attention/MLP biases are not supported by inflate.")
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    if kv < 1 or heads % kv:
        raise InflateError(f"{where}: num_attention_heads={heads} is not a multiple of "
                           f"num_key_value_heads={kv} (GQA), so its heads cannot be replicated.")


class _Inflater:
    """Per-tensor rules for one set of factors; random tensors come from one seeded generator
    on the output device (the meta device: shapes only)."""

    def __init__(self, factors: Factors, seed: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> None:
        self.f, self.dtype, self.device = factors, dtype, torch.device(device)
        self.meta = self.device.type == "meta"
        self.gen = None if self.meta else torch.Generator(device=self.device).manual_seed(seed)
        self._layouts: dict[Dims, _Layout] = {}

    def layout(self, d: Dims) -> _Layout:
        if d not in self._layouts:
            lay = self._layouts[d] = _Layout(d, self.f)
            for name in ("dims", "q", "q_heads", "kv", "kv_heads"):
                setattr(lay, name, getattr(lay, name).to(self.device))
        return self._layouts[d]

    def rand(self, *shape: int) -> torch.Tensor:
        if self.meta:
            return torch.empty(*shape, dtype=self.dtype, device=self.device)
        return torch.randn(*shape, generator=self.gen, dtype=self.dtype, device=self.device) * RANDOM_STD

    def zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(*shape, dtype=self.dtype, device=self.device)

    def ones(self, *shape: int) -> torch.Tensor:
        return torch.ones(*shape, dtype=self.dtype, device=self.device)

    def put(self, t: torch.Tensor) -> torch.Tensor:
        """A source tensor (fp32, CPU), in the output dtype on the output device."""
        return t.to(device=self.device, dtype=self.dtype)

    def corner(self, t: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
        """big with t in its top-left corner."""
        big[tuple(slice(0, n) for n in t.shape)] = self.put(t)
        return big

    def hidden_norm(self, weight: torch.Tensor) -> torch.Tensor:
        # Zero on the padding, so whatever reaches it there cannot leak into projections.
        return self.corner(weight / math.sqrt(self.f.hidden), self.zeros(weight.shape[0] * self.f.hidden))

    def head_norm(self, weight: torch.Tensor, lay: _Layout, scale: float) -> torch.Tensor:
        """q_norm/k_norm over the padded head_dim: zero on the padding."""
        big = self.zeros(lay.big.head_dim)
        big[lay.dims] = self.put(weight * scale if scale != 1.0 else weight)
        return big

    def input_side(self, weight: torch.Tensor, n_rows: int, rows, zero_rows) -> torch.Tensor:
        """q/k/v/gate/up: originals on the real inputs at ``rows``, the rest of the original units
        (``zero_rows``: head_dim padding) zero, new output units random."""
        big = self.rand(n_rows, weight.shape[1] * self.f.hidden)
        big[zero_rows] = 0.0
        big[rows, : weight.shape[1]] = self.put(weight)
        return big

    def output_side(self, weight: torch.Tensor, n_cols: int, cols) -> torch.Tensor:
        """o_proj/down_proj: new units write nothing, padded hidden dims stay zero."""
        big = self.zeros(weight.shape[0] * self.f.hidden, n_cols)
        big[: weight.shape[0], cols] = self.put(weight)
        return big

    def layer(self, t: dict[str, torch.Tensor], d: Dims) -> dict[str, torch.Tensor]:
        """One Qwen3 decoder layer's tensors (names relative to the layer) for source dims d."""
        lay, mlp = self.layout(d), slice(0, d.inter)
        q_size, kv_size = lay.big.heads * lay.big.head_dim, lay.big.kv_heads * lay.big.head_dim
        out = {}
        for name, weight in t.items():
            if name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
                out[name] = self.hidden_norm(weight)
            elif name == "self_attn.q_norm.weight":
                out[name] = self.head_norm(weight, lay, 1.0)
            elif name == "self_attn.k_norm.weight":
                out[name] = self.head_norm(weight, lay, 1.0 / math.sqrt(self.f.head_dim))
            elif name == "self_attn.q_proj.weight":
                out[name] = self.input_side(weight, q_size, lay.q, lay.q_heads)
            elif name in ("self_attn.k_proj.weight", "self_attn.v_proj.weight"):
                out[name] = self.input_side(weight, kv_size, lay.kv, lay.kv_heads)
            elif name in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                out[name] = self.input_side(weight, lay.big.inter, mlp, mlp)
            elif name == "self_attn.o_proj.weight":
                out[name] = self.output_side(weight, q_size, lay.q)
            elif name == "mlp.down_proj.weight":
                out[name] = self.output_side(weight, lay.big.inter, mlp)
            else:
                raise InflateError(f"unexpected layer tensor {name!r} (shape {tuple(weight.shape)}).")
        return out

    def identity_layer(self, d: Dims) -> dict[str, torch.Tensor]:
        """A layer of (inflated) dims d that costs a real layer's compute and adds exactly zero to the residual."""
        q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
        return {
            "input_layernorm.weight": self.ones(d.hidden),
            "post_attention_layernorm.weight": self.ones(d.hidden),
            "self_attn.q_norm.weight": self.ones(d.head_dim),
            "self_attn.k_norm.weight": self.ones(d.head_dim),
            "self_attn.q_proj.weight": self.rand(q, d.hidden),
            "self_attn.k_proj.weight": self.rand(kv, d.hidden),
            "self_attn.v_proj.weight": self.rand(kv, d.hidden),
            "self_attn.o_proj.weight": self.zeros(d.hidden, q),
            "mlp.gate_proj.weight": self.rand(d.inter, d.hidden),
            "mlp.up_proj.weight": self.rand(d.inter, d.hidden),
            "mlp.down_proj.weight": self.zeros(d.hidden, d.inter),
        }

    def fc(self, weight: torch.Tensor, n_ctx: int) -> torch.Tensor:
        """Drafter fc [H, n*H] -> [Fh*H, n*Fh*H]: block j reads the real part of inflated state j."""
        h, wide = weight.shape[0], weight.shape[0] * self.f.hidden
        big = self.zeros(wide, n_ctx * wide)
        for j in range(n_ctx):
            big[:h, j * wide : j * wide + h] = self.put(weight[:, j * h : (j + 1) * h])
        return big


def _split_layers(tensors: dict[str, torch.Tensor], prefix: str, n: int) -> tuple[list[dict], dict]:
    """(per-layer tensors with names relative to the layer, the rest)."""
    layers: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    rest = {}
    for name, t in tensors.items():
        if name.startswith(prefix):
            idx, _, sub = name[len(prefix):].partition(".")
            if not idx.isdigit() or int(idx) >= n:
                raise InflateError(f"tensor {name!r} names a layer outside 0..{n - 1}.")
            layers[int(idx)][sub] = t
        else:
            rest[name] = t
    return layers, rest


def target_config(cfg: dict, f: Factors, dtype: torch.dtype = torch.float32) -> dict:
    """The inflated target's config.json (no weights needed)."""
    depth = f.depth
    new_cfg = {**cfg, **_wide_fields(cfg, f), **_dtype_fields(cfg, dtype),
               "num_hidden_layers": cfg["num_hidden_layers"] * depth}
    if "layer_types" in cfg:  # each identity layer has its real layer's type
        new_cfg["layer_types"] = [t for t in cfg["layer_types"] for _ in range(depth)]
    if "max_window_layers" in cfg:
        new_cfg["max_window_layers"] = cfg["max_window_layers"] * depth
    return new_cfg


def draft_config(cfg: dict, f: Factors, dtype: torch.dtype = torch.float32) -> dict:
    """The inflated drafter's config.json (no weights needed)."""
    depth, ids = f.depth, cfg["dflash_config"]["target_layer_ids"]
    new_cfg = {
        **cfg,
        **_wide_fields(cfg, f),
        **_dtype_fields(cfg, dtype),
        # The state entering real layer k+1 is now the one entering layer (k+1)*depth.
        "dflash_config": {**cfg["dflash_config"], "target_layer_ids": [k * depth + depth - 1 for k in ids]},
    }
    if "num_target_layers" in cfg:
        new_cfg["num_target_layers"] = cfg["num_target_layers"] * depth
    return new_cfg


def inflate_target(cfg: dict, tensors: dict[str, torch.Tensor], inf: _Inflater,
                   bar: tqdm) -> tuple[dict, dict[str, torch.Tensor]]:
    n, d = cfg["num_hidden_layers"], Dims.of(cfg)
    layers, rest = _split_layers(tensors, "model.layers.", n)
    big = d.times(inf.f)
    out: dict[str, torch.Tensor] = {}
    for name, t in rest.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            out[name] = inf.corner(t, inf.zeros(t.shape[0], t.shape[1] * inf.f.hidden))
        elif name == "model.norm.weight":
            out[name] = inf.hidden_norm(t)
        else:
            raise InflateError(f"unexpected target tensor {name!r} (shape {tuple(t.shape)}).")
    depth = inf.f.depth
    for i, layer in enumerate(layers):
        for j in range(depth):
            new = inf.layer(layer, d) if j == 0 else inf.identity_layer(big)
            out.update({f"model.layers.{i * depth + j}.{k}": v for k, v in new.items()})
            bar.update()
    return target_config(cfg, inf.f, inf.dtype), out


def inflate_draft(cfg: dict, tensors: dict[str, torch.Tensor], inf: _Inflater,
                  bar: tqdm) -> tuple[dict, dict[str, torch.Tensor]]:
    layers, rest = _split_layers(tensors, "layers.", cfg["num_hidden_layers"])
    ids = cfg["dflash_config"]["target_layer_ids"]
    out: dict[str, torch.Tensor] = {}
    for name, t in rest.items():
        if name in ("norm.weight", "hidden_norm.weight"):
            out[name] = inf.hidden_norm(t)
        elif name == "fc.weight":
            out[name] = inf.fc(t, len(ids))
        else:
            raise InflateError(f"unexpected draft tensor {name!r} (shape {tuple(t.shape)}).")
    for i, layer in enumerate(layers):
        out.update({f"layers.{i}.{k}": v for k, v in inf.layer(layer, Dims.of(cfg)).items()})
        bar.update()
    return draft_config(cfg, inf.f, inf.dtype), out


def _dtype_fields(cfg: dict, dtype: torch.dtype) -> dict:
    name = str(dtype).removeprefix("torch.")
    return {key: name for key in ("torch_dtype", "dtype") if key in cfg or key == "torch_dtype"}


def _wide_fields(cfg: dict, f: Factors) -> dict:
    return {**_dim_fields(Dims.of(cfg).times(f)), "rms_norm_eps": cfg["rms_norm_eps"] / f.hidden}


def _write(path: Path, cfg: dict, tensors: dict[str, torch.Tensor], bar: tqdm) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for pattern in WEIGHT_FILES:  # a previous inflation's shards must not be read back
        for old in path.glob(pattern):
            old.unlink()
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    files = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for file, names in zip(files, shards):
        bar.set_postfix_str(f"writing {path.name}/{file}")
        save_file({k: tensors[k].contiguous().cpu() for k in names}, str(path / file))
        bar.update(sum(tensors[k].numel() * tensors[k].element_size() for k in names))
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total},
                 "weight_map": {k: file for file, names in zip(files, shards) for k in names}}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


@dataclass
class InflatedPair:
    """The inflated configs and tensors (on the meta device: shapes only)."""

    factors: Factors
    target_config: dict
    target: dict[str, torch.Tensor]
    draft_config: dict
    draft: dict[str, torch.Tensor]


def resolve_factors(tcfg: dict, dcfg: dict, *, width: Optional[int] = None, depth: Optional[int] = None,
                    like: Optional[str] = None, factors: Optional[Factors] = None,
                    where: tuple[object, object] = ("target", "draft")) -> Factors:
    """The factors from one of: width/depth (defaults 6, 7), a preset name, explicit Factors;
    checked against both source configs."""
    if like is not None and factors is not None:
        raise InflateError("give a preset (--like) or explicit factors, not both.")
    if (like is not None or factors is not None) and (width is not None or depth is not None):
        raise InflateError("--like and explicit factors set every factor; drop --width/--depth.")
    if like is not None:
        factors = Factors.like(like, tcfg)
    elif factors is None:
        factors = Factors.uniform(DEFAULT_WIDTH if width is None else width,
                                  DEFAULT_DEPTH if depth is None else depth)
    factors.check(tcfg, where[0])
    factors.check(dcfg, where[1])
    return factors


def build_pair(
    *,
    width: Optional[int] = None,
    depth: Optional[int] = None,
    like: Optional[str] = None,
    factors: Optional[Factors] = None,
    source_target: Path = ASSETS / "tiny-target",
    source_draft: Path = ASSETS / "tiny-draft",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> InflatedPair:
    """The inflated pair in memory on ``device``; ``device="meta"`` gives every config and
    tensor shape of even an 8B pair without allocating it."""
    if width is not None:
        check_factor("width", width)
    if depth is not None:
        check_factor("depth", depth)
    source_target, source_draft = Path(source_target), Path(source_draft)
    tcfg, ttensors = _read(source_target, "target")
    _check_qwen3(tcfg, source_target / "config.json")
    try:
        validate_draft(str(source_draft), str(source_target))
    except DraftConfigError as e:
        raise InflateError(f"source draft: {e}") from None
    dcfg, dtensors = _read(source_draft, "draft")
    _check_layers(dcfg, source_draft / "config.json")
    f = resolve_factors(tcfg, dcfg, width=width, depth=depth, like=like, factors=factors,
                        where=(source_target / "config.json", source_draft / "config.json"))

    inf = _Inflater(f, seed, dtype, device)
    steps = tcfg["num_hidden_layers"] * f.depth + dcfg["num_hidden_layers"]
    with tqdm(total=steps, desc=f"inflate ({f.describe()}) on {inf.device}", unit="layer",
              disable=not progress) as bar:
        with torch.no_grad():
            new_tcfg, new_t = inflate_target(tcfg, ttensors, inf, bar)
            new_dcfg, new_d = inflate_draft(dcfg, dtensors, inf, bar)
        if inf.device.type == "cuda":
            torch.cuda.synchronize(inf.device)
    return InflatedPair(f, new_tcfg, new_t, new_dcfg, new_d)


def inflate_pair(
    out: Path,
    *,
    width: Optional[int] = None,
    depth: Optional[int] = None,
    like: Optional[str] = None,
    factors: Optional[Factors] = None,
    source_target: Path = ASSETS / "tiny-target",
    source_draft: Path = ASSETS / "tiny-draft",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[Path, Path]:
    """Write ``out/target`` and ``out/draft``, the inflated twins of the sources; returns their paths.

    The factors: ``width``/``depth`` (default 6 and 7), or a preset (``like="qwen3-8b"``), or
    explicit ``Factors``."""
    if torch.device(device).type == "meta":
        raise InflateError("the meta device holds no values to write; use build_pair for shapes.")
    pair = build_pair(width=width, depth=depth, like=like, factors=factors, source_target=source_target,
                      source_draft=source_draft, seed=seed, dtype=dtype, device=device, progress=progress)
    target, draft = Path(out) / "target", Path(out) / "draft"
    total = sum(t.numel() * t.element_size() for t in (*pair.target.values(), *pair.draft.values()))
    with tqdm(total=total, desc="write", unit="B", unit_scale=True, disable=not progress) as bar:
        _write(target, pair.target_config, pair.target, bar)
        _write(draft, pair.draft_config, pair.draft, bar)
    for f in Path(source_target).iterdir():  # tokenizer, generation config, chat template
        if f.is_file() and f.name != "config.json" and not any(f.match(p) for p in WEIGHT_FILES):
            shutil.copy2(f, target / f.name)
    return target, draft


def param_count(path: Path) -> int:
    """Parameters of a safetensors checkpoint, from its headers (nothing loaded)."""
    total = 0
    for f in Path(path).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total


def _load_drafter(path: Path, device: torch.device, dtype: torch.dtype):
    from sgl_dflash.training.drafter import DFlashDrafter

    with torch.device(device):  # no CPU init of a large drafter
        drafter = DFlashDrafter(json.loads((Path(path) / "config.json").read_text()))
    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(str(f), device=str(device)))
    drafter.load_state_dict(state)
    return drafter.to(dtype).eval()


def _first_divergence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the first differing token (the row length if none)."""
    differ = a != b
    return torch.where(differ.any(1), differ.int().argmax(1), torch.tensor(a.shape[1]))


def check_pair(
    target: Path,
    draft: Path,
    *,
    source_target: Path = ASSETS / "tiny-target",
    source_draft: Path = ASSETS / "tiny-draft",
    device: str | torch.device = "cpu",
    prompts: int = 16,
    prompt_len: int = 48,
    new_tokens: int = 64,
    seed: int = 9,
) -> dict:
    """Does an inflated pair compute the source pair's tokens? Runs (HF transformers, the plain-torch
    drafter) the source in fp32, the twin in its own dtype and, when that is not fp32, the source
    in that dtype too (the drift that dtype alone causes), on held-out prompts; compares each with
    the fp32 source: greedy continuations, prompt logits, one draft block per prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sgl_dflash.training.corpus import heldout_prompts
    from sgl_dflash.training.reference_decoder import dflash_proposer

    dev = torch.device(device)
    dtype = DTYPES[json.loads((Path(target) / "config.json").read_text())["torch_dtype"]]
    seqs = heldout_prompts(AutoTokenizer.from_pretrained(source_target), prompts, prompt_len, seed=seed)
    ids = torch.tensor(seqs, device=dev)
    name = str(dtype).removeprefix("torch.")
    runs = {"source float32": (source_target, source_draft, torch.float32), f"twin {name}": (target, draft, dtype)}
    if dtype != torch.float32:
        runs[f"source {name}"] = (source_target, source_draft, dtype)
    outputs = {}
    for name, (tpath, dpath, dt) in runs.items():
        start = time.monotonic()
        model = AutoModelForCausalLM.from_pretrained(tpath, dtype=dt).to(dev).eval()
        drafter = _load_drafter(dpath, dev, dt)
        with torch.no_grad():
            logits = model(ids).logits.float().cpu()
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        propose = dflash_proposer(model, drafter)
        drafts = torch.stack([propose(s[:-1], s[-1], drafter.block_size)[0][:, 0] for s in seqs])
        outputs[name] = logits, gen[:, prompt_len:].cpu(), drafts
        print(f"check: {name} ran in {time.monotonic() - start:.1f} s", flush=True)
        del model, drafter
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    ref_logits, ref_gen, ref_drafts = outputs.pop("source float32")
    report = {"device": str(dev), "prompts": prompts, "prompt_len": prompt_len, "new_tokens": new_tokens,
              "draft_tokens_per_prompt": ref_drafts.shape[1], "vs_source_float32": {}}
    for name, (logits, gen, drafts) in outputs.items():
        report["vs_source_float32"][name] = {
            "identical_continuations": int((gen == ref_gen).all(1).sum()),
            "tokens_before_first_divergence": float(_first_divergence(gen, ref_gen).float().mean() / new_tokens),
            "prompt_logits_max_abs_diff": float((logits - ref_logits).abs().max()),
            "prompt_argmax_agree": float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()),
            "draft_tokens_equal": float((drafts == ref_drafts).float().mean()),
        }
    return report


def describe_check(report: dict) -> str:
    lines = [f"check on {report['device']}: {report['prompts']} held-out prompts of {report['prompt_len']} "
             f"tokens, {report['new_tokens']} greedy tokens each, one draft block each; vs the source in fp32:"]
    for name, r in report["vs_source_float32"].items():
        lines.append(
            f"  {name}: {r['identical_continuations']}/{report['prompts']} continuations identical, "
            f"{r['tokens_before_first_divergence']:.1%} of tokens before the first divergence; prompt logits "
            f"max |diff| {r['prompt_logits_max_abs_diff']:.3g}, argmax agree {r['prompt_argmax_agree']:.2%}; "
            f"draft tokens equal {r['draft_tokens_equal']:.2%}")
    return "\n".join(lines)


def factor_type(name: str):
    """argparse type for an inflation factor."""

    def parse(text: str) -> int:
        try:
            return check_factor(name, int(text))
        except (ValueError, InflateError):
            raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None

    return parse


def describe_pair(pair: InflatedPair) -> str:
    """A few lines: each model's shape and size."""
    lines = [f"factors: {pair.factors.describe()}"]
    for what, cfg, tensors in (("target", pair.target_config, pair.target), ("draft", pair.draft_config, pair.draft)):
        n = sum(t.numel() for t in tensors.values())
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        extra = (f", target_layer_ids {cfg['dflash_config']['target_layer_ids']}" if "dflash_config" in cfg else "")
        lines.append(
            f"{what}: hidden {cfg['hidden_size']}, {cfg['num_attention_heads']} heads, "
            f"{cfg['num_key_value_heads']} kv heads, head_dim {cfg['head_dim']}, intermediate "
            f"{cfg['intermediate_size']}, {cfg['num_hidden_layers']} layers{extra}; "
            f"{n / 1e6:.0f}M parameters, {nbytes / 1e9:.2f} GB {cfg['torch_dtype']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="sgl-dflash-make-tiny inflate", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=factor_type("width"), default=None,
                    help=f"hidden/heads/KV heads/MLP factor (default {DEFAULT_WIDTH})")
    ap.add_argument("--depth", type=factor_type("depth"), default=None,
                    help=f"target layer factor (default {DEFAULT_DEPTH})")
    flags = {field: ap.add_argument(f"--{flag}", type=factor_type(flag), default=None, dest=field,
                                    help=f"overrides --width for {field.replace('_', ' ')}"
                                    + (" (zero padding; default 1)" if field == "head_dim" else ""))
             for field, flag in Factors.FLAGS.items() if field != "depth"}
    ap.add_argument("--like", choices=sorted(PRESETS), default=None,
                    help="every factor from a preset shape (e.g. qwen3-8b: hidden 4096, 32/8 heads, "
                         "head_dim 128, intermediate 12288, 36 layers)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--device", default="cpu", help="where random weights are drawn (cuda: fast)")
    ap.add_argument("--dry-run", action="store_true",
                    help="build on the meta device and print the shapes; write nothing")
    ap.add_argument("--check", action="store_true",
                    help="then compare the twin with the source pair on --device (greedy tokens, logits, "
                         "drafts; HF transformers) and write OUT/check.json")
    ap.add_argument("--source-target", type=Path, default=ASSETS / "tiny-target")
    ap.add_argument("--source-draft", type=Path, default=ASSETS / "tiny-draft")
    ap.add_argument("--seed", type=int, default=0, help="for the random (inert) weights")
    args = ap.parse_args(argv)
    overrides = {field: getattr(args, field) for field in flags if getattr(args, field) is not None}
    if args.like and (overrides or args.width is not None or args.depth is not None):
        ap.error("--like sets every factor; drop --width, --depth and the --*-factor flags.")
    common = dict(like=args.like, source_target=args.source_target, source_draft=args.source_draft,
                  seed=args.seed, dtype=DTYPES[args.dtype])
    if overrides:
        width = DEFAULT_WIDTH if args.width is None else args.width
        base = {**vars(Factors.uniform(width, DEFAULT_DEPTH if args.depth is None else args.depth))}
        common["factors"] = Factors(**{**base, **overrides})
    else:
        common.update(width=args.width, depth=args.depth)
    start = time.monotonic()
    try:
        if args.dry_run:
            print(describe_pair(build_pair(device="meta", **common)))
            return
        target, draft = inflate_pair(args.out, device=args.device, **common)
    except InflateError as e:
        ap.exit(2, f"error: {e}\n")
    print(f"target: {target} ({param_count(target) / 1e6:.0f}M parameters)\n"
          f"draft:  {draft} ({param_count(draft) / 1e6:.0f}M parameters)\n"
          f"in {time.monotonic() - start:.1f} s", flush=True)
    if args.check:
        if torch.device(args.device).type == "cuda":
            torch.cuda.empty_cache()  # the built pair's tensors are gone; the check loads it back from disk
        report = check_pair(target, draft, source_target=args.source_target, source_draft=args.source_draft,
                            device=args.device)
        (args.out / "check.json").write_text(json.dumps(report, indent=2))
        print(describe_check(report))


if __name__ == "__main__":
    main()
