"""Train a DFlash drafter for a Hugging Face causal LM.

    python -m sgl_dflash.train --target TARGET --prompts PROMPTS.jsonl --out DRAFT_DIR

1. regenerate: the target answers every prompt itself (batched, greedy by
   default or sampled with --temperature), so the drafter learns the target's
   own distribution; written to DRAFT_DIR/regenerated.jsonl, resumable.
2. train: Qwen3-style draft layers over the target's hidden states at
   --target-layer-ids, random anchors, block-wise cross entropy (against the
   target's next-token distribution) weighted by exp(-(k-1)/gamma); the target
   embedding and lm_head are frozen and borrowed; the draft layers start as
   copies of the target's top layers.
   Checkpoints to DRAFT_DIR/train_state.pt and resumes from it.
3. save: DRAFT_DIR/config.json + model.safetensors in the DFlash draft format,
   loadable by `--speculative-algorithm SGL_DFLASH --speculative-draft-model-path DRAFT_DIR`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sgl_dflash.training.dflash_trainer import (
    TrainConfig,
    TrainingInputError,
    check_target,
    load_prompts,
    load_target,
    regenerate,
    train_drafter,
)
from sgl_dflash.training.drafter import DFlashDrafter


def default_layer_ids(n_target_layers: int, n_draft_layers: int) -> list[int]:
    """Spread over 1..L-3 as in the paper, clipped to what SGLang can capture (0..L-2)."""
    hi = max(1, n_target_layers - 3)
    ids = {round(1 + (hi - 1) * i / max(1, n_draft_layers - 1)) for i in range(n_draft_layers)}
    return sorted(min(i, n_target_layers - 2) for i in ids)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", type=Path, required=True, help="local Hugging Face causal LM")
    ap.add_argument("--prompts", type=Path, required=True, help=".jsonl ({'prompt': ...}) or .txt (one per line)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--draft-layers", type=int, default=2)
    ap.add_argument("--target-layer-ids", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--mask-token-id", type=int, help="default: the tokenizer's mask token")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="regenerated response length")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy regeneration")
    ap.add_argument("--regen-batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--batch", type=int, default=TrainConfig.batch)
    ap.add_argument("--anchors", type=int, default=TrainConfig.anchors, help="anchors per sequence")
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--gamma", type=float, default=TrainConfig.gamma)
    ap.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True,
                    help="soft labels (the target's next-token distribution) instead of the regenerated tokens")
    ap.add_argument("--init-from-target", action=argparse.BooleanOptionalAction, default=True,
                    help="start the draft layers as copies of the target's top layers (default: on)")
    ap.add_argument("--cache-target-states", action="store_true",
                    help="run the target once per sequence and keep its states in memory "
                         "((len(layer ids) + 1) x hidden values per token) instead of once per step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    torch.manual_seed(args.seed)
    prompts = load_prompts(args.prompts)
    target, tokenizer = load_target(args.target, args.device)
    n_layers = int(target.config.num_hidden_layers)
    layer_ids = args.target_layer_ids or default_layer_ids(n_layers, args.draft_layers)
    check_target(target, layer_ids, args.block_size)
    mask_id = args.mask_token_id if args.mask_token_id is not None else tokenizer.mask_token_id
    if mask_id is None or not 0 <= mask_id < target.config.vocab_size:
        raise TrainingInputError(
            f"mask token id {mask_id} is not in the target vocabulary; pass --mask-token-id "
            "(an id the target rarely or never emits)."
        )
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "regenerated.jsonl"
    regenerate(target, tokenizer, prompts, data, max_new_tokens=args.max_new_tokens,
               temperature=args.temperature, batch=args.regen_batch)

    target_cfg = json.loads((args.target / "config.json").read_text())  # what SGLang reads
    drafter = DFlashDrafter.from_target_config(
        target_cfg.get("text_config", target_cfg), num_layers=args.draft_layers, block_size=args.block_size,
        target_layer_ids=layer_ids, mask_token_id=mask_id,
    ).to(target.device)
    if args.init_from_target and not (args.out / "train_state.pt").is_file():
        copied = drafter.init_from_target(target.get_decoder().layers)
        print(f"[train] draft layers start from target layers {copied}")
    cfg = TrainConfig(steps=args.steps, batch=args.batch, anchors=args.anchors, lr=args.lr,
                      gamma=args.gamma, seed=args.seed, distill=args.distill,
                      cache_target_states=args.cache_target_states)
    train_drafter(target, drafter, data, args.out, cfg)
    drafter.save_pretrained(args.out)
    (args.out / "train_state.pt").unlink(missing_ok=True)
    print(f"[train] drafter saved to {args.out}")
    return args.out


def main(argv: list[str] | None = None) -> None:
    try:
        run(parse_args(argv))
    except TrainingInputError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
