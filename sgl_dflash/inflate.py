"""Inflate a Qwen3 target and its DFlash drafter to a realistic cost without changing what they compute.

The shipped tiny pair is so small that SGLang's per-step overhead dominates
its speed; a benchmark on it says little about speculation. The inflated twin
costs what a real model of its size costs and still produces the same tokens:

* wider by W: the hidden size grows W-fold with dimensions that stay exactly
  zero (embedding, lm_head and every output projection are zero there); heads
  (same head_dim, same GQA ratio, originals first) and MLP units grow W-fold,
  the new ones with random input weights (real compute) and zero output
  weights. RMSNorm over the hidden size then sees a mean square W times
  smaller, so its weight is divided by sqrt(W) and its eps by W: the
  normalized values are unchanged (q_norm/k_norm are over head_dim: kept).
* deeper by D (target only): real layer i becomes layer i*D, followed by D-1
  identity layers (random weights except o_proj and down_proj, all zero). The
  drafter's target layer id k (state entering real layer k+1) becomes
  k*D + D-1, the last identity layer before real layer k+1, which spreads
  the ids through the depth as in real DFlash drafts.
* the drafter keeps its depth and gets the same width; its ``fc`` (context
  of len(target_layer_ids) concatenated hidden states) keeps each original
  block at the start of the matching inflated block.

    sgl-dflash-make-tiny inflate OUT [--width W] [--depth D] [--source-target T --source-draft D]

writes ``OUT/target`` and ``OUT/draft`` (fp32, HF / public DFlash formats,
tokenizer files copied).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
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


class InflateError(ValueError):
    """A factor or source checkpoint that cannot be inflated; the message says which and why."""


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

    def times(self, w: int) -> "Dims":
        return Dims(self.hidden * w, self.heads * w, self.kv_heads * w, self.head_dim, self.inter * w)


def check_factor(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InflateError(f"--{name} must be an integer >= 1, got {value!r}.")
    return value


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
    """Per-tensor rules for one width factor; random tensors come from one seeded generator."""

    def __init__(self, width: int, seed: int) -> None:
        self.w = width
        self.gen = torch.Generator().manual_seed(seed)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen) * RANDOM_STD

    @staticmethod
    def corner(t: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
        """big with t in its top-left corner."""
        big[tuple(slice(0, n) for n in t.shape)] = t
        return big

    def hidden_norm(self, weight: torch.Tensor) -> torch.Tensor:
        # Zero on the padding, so whatever reaches it there cannot leak into projections.
        return self.corner(weight / math.sqrt(self.w), torch.zeros(weight.shape[0] * self.w))

    def input_side(self, weight: torch.Tensor) -> torch.Tensor:
        """q/k/v/gate/up: originals on the real inputs, new output units random."""
        rows, cols = weight.shape
        big = self.rand(rows * self.w, cols * self.w)
        big[:rows] = 0.0
        return self.corner(weight, big)

    def output_side(self, weight: torch.Tensor) -> torch.Tensor:
        """o_proj/down_proj: new units write nothing, padded hidden dims stay zero."""
        return self.corner(weight, torch.zeros(weight.shape[0] * self.w, weight.shape[1] * self.w))

    def layer(self, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One Qwen3 decoder layer's tensors (names relative to the layer)."""
        out = {}
        for name, weight in t.items():
            if name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
                out[name] = self.hidden_norm(weight)
            elif name in ("self_attn.q_norm.weight", "self_attn.k_norm.weight"):
                out[name] = weight.clone()  # over head_dim, which does not change
            elif name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight",
                                "up_proj.weight")):
                out[name] = self.input_side(weight)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                out[name] = self.output_side(weight)
            else:
                raise InflateError(f"unexpected layer tensor {name!r} (shape {tuple(weight.shape)}).")
        return out

    def identity_layer(self, d: Dims) -> dict[str, torch.Tensor]:
        """A layer that costs a real layer's compute and adds exactly zero to the residual."""
        q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
        return {
            "input_layernorm.weight": torch.ones(d.hidden),
            "post_attention_layernorm.weight": torch.ones(d.hidden),
            "self_attn.q_norm.weight": torch.ones(d.head_dim),
            "self_attn.k_norm.weight": torch.ones(d.head_dim),
            "self_attn.q_proj.weight": self.rand(q, d.hidden),
            "self_attn.k_proj.weight": self.rand(kv, d.hidden),
            "self_attn.v_proj.weight": self.rand(kv, d.hidden),
            "self_attn.o_proj.weight": torch.zeros(d.hidden, q),
            "mlp.gate_proj.weight": self.rand(d.inter, d.hidden),
            "mlp.up_proj.weight": self.rand(d.inter, d.hidden),
            "mlp.down_proj.weight": torch.zeros(d.hidden, d.inter),
        }

    def fc(self, weight: torch.Tensor, n_ctx: int) -> torch.Tensor:
        """Drafter fc [H, n*H] -> [W*H, n*W*H]: block j reads the real part of inflated state j."""
        h = weight.shape[0]
        big = torch.zeros(h * self.w, n_ctx * h * self.w)
        for j in range(n_ctx):
            big[:h, j * h * self.w : j * h * self.w + h] = weight[:, j * h : (j + 1) * h]
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


def inflate_target(cfg: dict, tensors: dict[str, torch.Tensor], inf: _Inflater, depth: int,
                   bar: tqdm) -> tuple[dict, dict[str, torch.Tensor]]:
    n = cfg["num_hidden_layers"]
    layers, rest = _split_layers(tensors, "model.layers.", n)
    big = Dims.of(cfg).times(inf.w)
    out: dict[str, torch.Tensor] = {}
    for name, t in rest.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            out[name] = inf.corner(t, torch.zeros(t.shape[0], t.shape[1] * inf.w))
        elif name == "model.norm.weight":
            out[name] = inf.hidden_norm(t)
        else:
            raise InflateError(f"unexpected target tensor {name!r} (shape {tuple(t.shape)}).")
    for i, layer in enumerate(layers):
        for j in range(depth):
            new = inf.layer(layer) if j == 0 else inf.identity_layer(big)
            out.update({f"model.layers.{i * depth + j}.{k}": v for k, v in new.items()})
            bar.update()
    new_cfg = {**cfg, **_wide_fields(cfg, inf.w), **_fp32(cfg), "num_hidden_layers": n * depth}
    if "layer_types" in cfg:  # each identity layer has its real layer's type
        new_cfg["layer_types"] = [t for t in cfg["layer_types"] for _ in range(depth)]
    if "max_window_layers" in cfg:
        new_cfg["max_window_layers"] = cfg["max_window_layers"] * depth
    return new_cfg, out


def inflate_draft(cfg: dict, tensors: dict[str, torch.Tensor], inf: _Inflater, depth: int,
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
        out.update({f"layers.{i}.{k}": v for k, v in inf.layer(layer).items()})
        bar.update()
    new_cfg = {
        **cfg,
        **_wide_fields(cfg, inf.w),
        **_fp32(cfg),
        # The state entering real layer k+1 is now the one entering layer (k+1)*depth.
        "dflash_config": {**cfg["dflash_config"], "target_layer_ids": [k * depth + depth - 1 for k in ids]},
    }
    if "num_target_layers" in cfg:
        new_cfg["num_target_layers"] = cfg["num_target_layers"] * depth
    return new_cfg, out


def _fp32(cfg: dict) -> dict:
    return {key: "float32" for key in ("torch_dtype", "dtype") if key in cfg or key == "torch_dtype"}


def _wide_fields(cfg: dict, w: int) -> dict:
    d = Dims.of(cfg)
    return {
        "hidden_size": d.hidden * w,
        "intermediate_size": d.inter * w,
        "num_attention_heads": d.heads * w,
        "num_key_value_heads": d.kv_heads * w,
        "head_dim": d.head_dim,
        "rms_norm_eps": cfg["rms_norm_eps"] / w,
    }


def _write(path: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for pattern in WEIGHT_FILES:  # a previous inflation's shards must not be read back
        for old in path.glob(pattern):
            old.unlink()
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))


def inflate_pair(
    out: Path,
    *,
    width: int = DEFAULT_WIDTH,
    depth: int = DEFAULT_DEPTH,
    source_target: Path = ASSETS / "tiny-target",
    source_draft: Path = ASSETS / "tiny-draft",
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``out/target`` and ``out/draft``, the inflated twins of the sources; returns their paths."""
    width, depth = check_factor("width", width), check_factor("depth", depth)
    source_target, source_draft = Path(source_target), Path(source_draft)
    tcfg, ttensors = _read(source_target, "target")
    _check_qwen3(tcfg, source_target / "config.json")
    try:
        validate_draft(str(source_draft), str(source_target))
    except DraftConfigError as e:
        raise InflateError(f"source draft: {e}") from None
    dcfg, dtensors = _read(source_draft, "draft")
    _check_layers(dcfg, source_draft / "config.json")

    inf = _Inflater(width, seed)
    steps = tcfg["num_hidden_layers"] * depth + dcfg["num_hidden_layers"]
    with tqdm(total=steps, desc=f"inflate {width}x wide, {depth}x deep", unit="layer") as bar:
        new_tcfg, new_t = inflate_target(tcfg, ttensors, inf, depth, bar)
        new_dcfg, new_d = inflate_draft(dcfg, dtensors, inf, depth, bar)
        bar.set_postfix_str("writing")
        target, draft = Path(out) / "target", Path(out) / "draft"
        _write(target, new_tcfg, new_t)
        _write(draft, new_dcfg, new_d)
    for f in source_target.iterdir():  # tokenizer, generation config, chat template
        if f.is_file() and f.name != "config.json" and not any(f.match(p) for p in WEIGHT_FILES):
            shutil.copy2(f, target / f.name)
    return target, draft


def param_count(path: Path) -> int:
    return sum(t.numel() for f in Path(path).glob("*.safetensors") for t in load_file(str(f)).values())


def factor_type(name: str):
    """argparse type for an inflation factor."""

    def parse(text: str) -> int:
        try:
            return check_factor(name, int(text))
        except (ValueError, InflateError):
            raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None

    return parse


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="sgl-dflash-make-tiny inflate", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=factor_type("width"), default=DEFAULT_WIDTH, help="hidden/heads/MLP factor")
    ap.add_argument("--depth", type=factor_type("depth"), default=DEFAULT_DEPTH, help="target layer factor")
    ap.add_argument("--source-target", type=Path, default=ASSETS / "tiny-target")
    ap.add_argument("--source-draft", type=Path, default=ASSETS / "tiny-draft")
    ap.add_argument("--seed", type=int, default=0, help="for the random (inert) weights")
    args = ap.parse_args(argv)
    try:
        target, draft = inflate_pair(args.out, width=args.width, depth=args.depth, seed=args.seed,
                                     source_target=args.source_target, source_draft=args.source_draft)
    except InflateError as e:
        ap.exit(2, f"error: {e}\n")
    print(f"target: {target} ({param_count(target) / 1e6:.0f}M parameters)\n"
          f"draft:  {draft} ({param_count(draft) / 1e6:.0f}M parameters)")
