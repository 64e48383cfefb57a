"""Tiny target/draft checkpoints for tests, the CPU demo and benchmarks.

Everything here is made locally (no hub access): a byte-level tokenizer, a
small Qwen3 or Llama target, and a DFlash draft in the public checkpoint
format. Four target flavours:

* ``random``: random weights, for token-for-token exactness tests.
* ``zero_head``: lm_head all zeros, so every logit ties and greedy decoding
  always emits token 0; the draft borrows that head, so every draft token is
  accepted (exercises full-block acceptance and KV commit at block boundaries).
* ``chain``: hand-set weights whose greedy continuation of any ordinary token
  is ``D`` and then ``EOS EOS ...``; the draft proposes ``EOS`` at every masked
  position, so the first speculative step accepts a whole block that starts
  with EOS (exercises EOS inside an accepted block).
* ``branchy``: hand-set weights whose greedy continuation alternates
  ``a b a b ...`` while the drafter's distribution at every masked position
  ranks ``a`` first and ``b`` second: the chain keeps missing, a top-2 tree
  accepts whole blocks through non-top-1 branches.

Usage: ``python -m sgl_dflash.tiny_models OUT_DIR [--flavour random] [--arch qwen3]``
writes ``OUT_DIR/target`` and ``OUT_DIR/draft``.
``sgl-dflash-make-tiny inflate OUT_DIR [--width W] [--depth D]`` writes the
shipped trained pair's inflated twin instead (see ``sgl_dflash.inflate``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from sgl_dflash.inflate import main as inflate_main

EOS = "<|endoftext|>"
MASK = "<|mask|>"
NUM_BYTE_TOKENS = 256
EOS_ID = NUM_BYTE_TOKENS
MASK_ID = NUM_BYTE_TOKENS + 1
VOCAB_SIZE = NUM_BYTE_TOKENS + 2
CHAIN_D_ID = ord("=")  # the chain target's first continuation token
BRANCHY_A, BRANCHY_B = ord("a"), ord("b")  # the branchy target's alternating tokens

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def write_tokenizer(path: Path) -> None:
    """A byte-level tokenizer: one token per byte plus EOS and MASK."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    assert len(alphabet) == NUM_BYTE_TOKENS
    # Order by byte value so that token id == byte value.
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(NUM_BYTE_TOKENS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS, MASK])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, mask_token=MASK
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (what ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def target_config(
    arch: str, *, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2
) -> dict:
    head_dim = hidden // heads
    common = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "hidden_act": "silu",
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
        "torch_dtype": "float32",
    }
    if arch == "qwen3":
        return {**common, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}
    if arch == "llama":
        return {
            **common,
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "mlp_bias": False,
        }
    raise ValueError(f"unknown arch {arch!r}: expected qwen3 or llama")


def draft_config(
    tcfg: dict, *, layers: int = 2, block_size: int = 4, target_layer_ids: list[int] | None = None
) -> dict:
    if target_layer_ids is None:
        # SGLang captures "before layer k+1", so the last target layer is unavailable.
        target_layer_ids = [1, tcfg["num_hidden_layers"] - 2]
    keys = (
        "hidden_size intermediate_size num_attention_heads num_key_value_heads head_dim "
        "max_position_embeddings rms_norm_eps rope_theta attention_bias hidden_act vocab_size"
    ).split()
    return {
        **{k: tcfg[k] for k in keys},
        "architectures": ["DFlashDraftModel"],
        "model_type": "qwen3",
        "num_hidden_layers": layers,
        "num_target_layers": tcfg["num_hidden_layers"],
        "block_size": block_size,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "dflash_config": {"mask_token_id": MASK_ID, "target_layer_ids": target_layer_ids},
    }


def random_target_weights(cfg: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights with a wide logit spread, so greedy argmax has no near-ties."""
    h, inter, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd

    def rnd(*shape: int, std: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    w = {
        "model.embed_tokens.weight": rnd(cfg["vocab_size"], h, std=1.0),
        "model.norm.weight": torch.ones(h),
        "lm_head.weight": rnd(cfg["vocab_size"], h, std=0.5),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w.update(_layer_weights(p, h, inter, q, kv, hd, rnd, qk_norm=cfg["model_type"] == "qwen3"))
    return w


def _layer_weights(p, h, inter, q, kv, hd, rnd, *, qk_norm: bool) -> dict[str, torch.Tensor]:
    w = {
        p + "input_layernorm.weight": torch.ones(h),
        p + "post_attention_layernorm.weight": torch.ones(h),
        p + "self_attn.q_proj.weight": rnd(q, h),
        p + "self_attn.k_proj.weight": rnd(kv, h),
        p + "self_attn.v_proj.weight": rnd(kv, h),
        p + "self_attn.o_proj.weight": rnd(h, q),
        p + "mlp.gate_proj.weight": rnd(inter, h),
        p + "mlp.up_proj.weight": rnd(inter, h),
        p + "mlp.down_proj.weight": rnd(h, inter),
    }
    if qk_norm:
        w[p + "self_attn.q_norm.weight"] = torch.ones(hd)
        w[p + "self_attn.k_norm.weight"] = torch.ones(hd)
    return w


def random_draft_weights(dcfg: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    h, inter, hd = dcfg["hidden_size"], dcfg["intermediate_size"], dcfg["head_dim"]
    q, kv = dcfg["num_attention_heads"] * hd, dcfg["num_key_value_heads"] * hd
    n_ctx = len(dcfg["dflash_config"]["target_layer_ids"])

    def rnd(*shape: int, std: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    w = {
        "fc.weight": rnd(h, n_ctx * h),
        "hidden_norm.weight": torch.ones(h),
        "norm.weight": torch.ones(h),
    }
    for i in range(dcfg["num_hidden_layers"]):
        w.update(_layer_weights(f"layers.{i}.", h, inter, q, kv, hd, rnd, qk_norm=True))
    return w


def _silence_residual_writers(w: dict[str, torch.Tensor]) -> None:
    """Zero o_proj/down_proj so each layer leaves the residual stream untouched."""
    for name, t in w.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            t.zero_()


def make_chain(
    tw: dict[str, torch.Tensor], dw: dict[str, torch.Tensor], cfg: dict, gen: torch.Generator
) -> None:
    """Greedy continuation: ordinary -> D -> EOS -> EOS ...; MASK -> EOS.

    The residual stream equals the token embedding (layers silenced). Embedding
    dim 0 marks D, dim 1 marks EOS/MASK, dim 2 marks every other token; the head
    reads those marker dims with weight 1 and every dim with small noise, so
    argmax is decided by the marker while sampled distributions have no ties.
    """
    _silence_residual_writers(tw)
    _silence_residual_writers(dw)
    emb = tw["model.embed_tokens.weight"]
    emb[:, :3] = 0.0
    emb[:, 2] = 4.0
    emb[CHAIN_D_ID, 2], emb[CHAIN_D_ID, 0] = 0.0, 4.0
    for t in (EOS_ID, MASK_ID):
        emb[t, 2], emb[t, 1] = 0.0, 4.0
    head = torch.randn(cfg["vocab_size"], cfg["hidden_size"], generator=gen) * 0.02
    head[CHAIN_D_ID, 2] += 1.0  # ordinary -> D
    head[EOS_ID, 0] += 1.0  # D -> EOS
    head[EOS_ID, 1] += 1.0  # EOS, MASK -> EOS
    tw["lm_head.weight"] = head


def make_branchy(
    tw: dict[str, torch.Tensor], dw: dict[str, torch.Tensor], cfg: dict, gen: torch.Generator
) -> None:
    """Greedy continuation: a -> b -> a, any other token -> a; every masked draft
    position: a (p ~0.4), then b (p ~0.3), then the rest (~0.001 each).

    As in make_chain, layers are silenced so the residual stream is the token
    embedding; marker dims: 0 = a, 1 = b, 2 = MASK, 3 = every other token. The
    target's margins (~5.5 logits) are wide for greedy and leave real mass on
    the other tokens for sampling.
    """
    _silence_residual_writers(tw)
    _silence_residual_writers(dw)
    emb = tw["model.embed_tokens.weight"]
    emb[:, :4] = 0.0
    emb[:, 3] = 4.0
    for tok, marker in ((BRANCHY_A, 0), (BRANCHY_B, 1), (MASK_ID, 2)):
        emb[tok, 3], emb[tok, marker] = 0.0, 4.0
    head = torch.randn(cfg["vocab_size"], cfg["hidden_size"], generator=gen) * 0.02
    head[BRANCHY_B, 0] += 1.5  # a -> b
    head[BRANCHY_A, 1] += 1.5  # b -> a
    head[BRANCHY_A, 3] += 1.5  # other -> a
    head[BRANCHY_A, 2] += 1.65  # MASK: a first ...
    head[BRANCHY_B, 2] += 1.55  # ... b second
    tw["lm_head.weight"] = head


def make_pair(
    out: Path,
    *,
    flavour: str = "random",
    arch: str = "qwen3",
    block_size: int = 4,
    seed: int = 0,
    target_layers: int = 4,
    draft_layers: int = 2,
) -> tuple[Path, Path]:
    """Write ``out/target`` and ``out/draft``; returns their paths."""
    gen = torch.Generator().manual_seed(seed)
    tcfg = target_config(arch, layers=target_layers)
    dcfg = draft_config(tcfg, layers=draft_layers, block_size=block_size)
    tw = random_target_weights(tcfg, gen)
    dw = random_draft_weights(dcfg, gen)
    if flavour == "zero_head":
        tw["lm_head.weight"].zero_()
    elif flavour == "chain":
        make_chain(tw, dw, tcfg, gen)
    elif flavour == "branchy":
        make_branchy(tw, dw, tcfg, gen)
    elif flavour != "random":
        raise ValueError(f"unknown flavour {flavour!r}: expected random, zero_head, chain or branchy")
    target, draft = out / "target", out / "draft"
    for path, cfg, weights in ((target, tcfg, tw), (draft, dcfg, dw)):
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(cfg, indent=2))
        save_file({k: v.contiguous() for k, v in weights.items()}, str(path / "model.safetensors"))
    (target / "generation_config.json").write_text(
        json.dumps({"eos_token_id": EOS_ID, "bos_token_id": EOS_ID})
    )
    write_tokenizer(target)
    return target, draft


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["inflate"]:
        return inflate_main(argv[1:])
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="`%(prog)s inflate --help`: the shipped pair's inflated twin, for benchmarks.",
    )
    ap.add_argument("out", type=Path)
    ap.add_argument("--flavour", default="random", choices=["random", "zero_head", "chain", "branchy"])
    ap.add_argument("--arch", default="qwen3", choices=["qwen3", "llama"])
    ap.add_argument("--block-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    target, draft = make_pair(
        args.out, flavour=args.flavour, arch=args.arch, block_size=args.block_size, seed=args.seed
    )
    print(f"target: {target}\ndraft:  {draft}")


if __name__ == "__main__":
    main()
