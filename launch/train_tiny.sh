#!/usr/bin/env bash
# Reproduce the shipped tiny pair (each part 16-18 min on 2 CPU cores):
#   bash launch/train_tiny.sh target   # tokenizer + Qwen3 target on the stdlib source
#   bash launch/train_tiny.sh draft    # DFlash drafter for it (regenerate + train)
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
ASSETS=sgl_dflash/assets
case "${1:-}" in
  target)
    .venv/bin/python -m sgl_dflash.training.train_target "$ASSETS/tiny-target" --steps 3600 ;;
  draft)
    mkdir -p .cache/train
    .venv/bin/python -m sgl_dflash.training.stdlib_prompts .cache/train/prompts.jsonl \
      --tokenizer "$ASSETS/tiny-target" --n 3000 --tokens 64
    .venv/bin/python -m sgl_dflash.train --target "$ASSETS/tiny-target" \
      --prompts .cache/train/prompts.jsonl --out .cache/train/tiny-draft \
      --block-size 16 --draft-layers 4 --target-layer-ids 0,1,2 --max-new-tokens 128 \
      --steps 4200 --batch 16 --anchors 8 --lr 3e-3 --gamma 3 --device cpu --cache-target-states
    mkdir -p "$ASSETS/tiny-draft"
    cp .cache/train/tiny-draft/config.json .cache/train/tiny-draft/model.safetensors "$ASSETS/tiny-draft/" ;;
  *) echo "usage: $0 target|draft" >&2; exit 2 ;;
esac
