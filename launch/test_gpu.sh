#!/usr/bin/env bash
# GPU checks in a few minutes, for a session lent a GPU: kernels and FlashInfer's
# tree mask, real GPU servers (CUDA graphs, overlap scheduling) exact vs plain
# for the chain, trees and the controller, then a short benchmark. Results: bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
.venv/bin/python -m pytest tests/gpu -x -q "$@"
.venv/bin/python bench/compare.py --device cuda --pair tiny --concurrency 1,8,32 --rounds 3 \
  --modes "plain,DFLASH,SGL_DFLASH,SGL_DFLASH tree k4 n32=--speculative-eagle-topk 4 --speculative-num-draft-tokens 32,\
SGL_DFLASH adaptive=--speculative-eagle-topk 4 --speculative-num-draft-tokens 32 --speculative-adaptive"
