#!/usr/bin/env bash
# Serve a real target with SGL_DFLASH on a GPU (FlashInfer attention, CUDA graphs).
#   launch/serve_gpu.sh TARGET_PATH DRAFT_PATH [BLOCK_SIZE] [extra sglang args...]
# e.g. launch/serve_gpu.sh /models/Qwen3-8B /models/Qwen3-8B-DFlash-b16 16 --port 30000
set -euo pipefail
TARGET="$1"; DRAFT="$2"; BLOCK="${3:-16}"; shift $(( $# < 3 ? $# : 3 ))
cd "$(dirname "$0")/.."
exec .venv/bin/python -m sglang.launch_server \
  --model-path "$TARGET" \
  --speculative-algorithm SGL_DFLASH \
  --speculative-draft-model-path "$DRAFT" \
  --speculative-num-draft-tokens "$BLOCK" \
  --attention-backend flashinfer \
  "$@"
