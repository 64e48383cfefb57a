#!/usr/bin/env bash
# Build the GPU kit in .gpu/ (git-ignored): SGLang 0.5.23's server stack as cp312 wheels for GPU
# machines with torch but no package registry (launch/gpu_kit.txt, launch/gpu_kit.py). Run here,
# where the registry is reachable; idempotent (downloads are cached in .cache/gpu-kit). Prints the
# kit's size beside the working tree's against the 64 MiB that travel to the GPU machine.
# Then, on the GPU machine, with .gpu carried: bash launch/test_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
exec .venv/bin/python launch/gpu_kit.py pack
