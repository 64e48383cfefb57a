#!/usr/bin/env bash
# GPU checks in a few minutes, for a session lent a GPU: kernels and FlashInfer's
# tree mask, real GPU servers (CUDA graphs, overlap scheduling) exact vs plain
# for the chain, trees and the controller, then a short benchmark. Results: bench/results/.
#
# --bare: for a GPU machine that cannot install SGLang (no package registry; this
# workplace's lent machines have torch and triton only): the Triton kernels on the
# GPU against their references with the machine's python3, FlashInfer's attention with
# the tree mask where .gpu/site.tar.gz was carried (launch/pack_flashinfer.sh), then the
# step-cost table of a Llama-3-8B-shaped target (bench/gpu_step_cost.py), what our
# eager tree stages add per step (bench/gpu_tree_overhead.py) and, with FlashInfer, what
# a tree's mask adds to verify attention and what splitting it off the prefix saves
# (bench/gpu_mask_cost.py). The servers need SGLang's stack and are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "${1:-}" = "--bare" ]; then
  shift
  # The kernels ship as sgl_dflash.kernels (pyproject's package-dir); lay that out without pip.
  pkg="$(mktemp -d)"
  cp -r sgl_dflash "$pkg/" && rm -rf "$pkg/sgl_dflash/kernels" && cp -r kernels "$pkg/sgl_dflash/kernels"
  export PYTHONPATH="$pkg"
  if [ -f .gpu/site.tar.gz ]; then
    mkdir "$pkg/site" && tar xzf .gpu/site.tar.gz -C "$pkg/site"
    # tvm-ffi would otherwise compile an optional torch extension at import.
    export PYTHONPATH="$pkg:$pkg/site" TVM_FFI_DISABLE_TORCH_C_DLPACK=1
  fi
  python3 -P -m pytest tests/gpu/test_kernels_cuda.py --noconftest -p no:cacheprovider -q "$@"
  for context in 1024 4096; do python3 bench/gpu_step_cost.py --context "$context"; done
  python3 bench/gpu_tree_overhead.py
  if python3 -c 'import flashinfer' 2>/dev/null; then python3 bench/gpu_mask_cost.py; fi
  exit
fi
bash launch/setup.sh
.venv/bin/python -m pytest tests/gpu -x -q "$@"
.venv/bin/python bench/compare.py --device cuda --pair tiny --concurrency 1,8,32 --rounds 3 \
  --modes "plain,DFLASH,SGL_DFLASH,SGL_DFLASH tree k4 n32=--speculative-eagle-topk 4 --speculative-num-draft-tokens 32,\
SGL_DFLASH adaptive=--speculative-eagle-topk 4 --speculative-num-draft-tokens 32 --speculative-adaptive"
