#!/usr/bin/env bash
# For `launch/test_gpu.sh --bare` on a GPU machine with no package registry (this
# workplace's lent machines: Python 3.12, torch and Triton, nvcc): packs SGLang's FlashInfer
# and its tvm-ffi for Python 3.12 into .gpu/site.tar.gz (~30 MiB; 64 MiB travels there).
# Kept: FlashInfer's Python, its headers and the top-level sources its JIT builds attention
# from. Left out: the sources of every other op family (MoE, GEMM, ...: 250 MB unpacked).
# Then, on the GPU machine with .gpu carried: bash launch/test_gpu.sh --bare
set -euo pipefail
cd "$(dirname "$0")/.."
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
.venv/bin/pip download -q --no-deps --only-binary=:all: -d "$work/whl" \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  "flashinfer-python==$(version flashinfer-python)" "apache-tvm-ffi==$(version apache-tvm-ffi)"
mkdir -p "$work/site" .gpu
for wheel in "$work"/whl/*.whl; do unzip -q -o "$wheel" -d "$work/site"; done
find "$work/site/flashinfer/data/csrc" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
tar czf .gpu/site.tar.gz -C "$work/site" .
echo "[pack] .gpu/site.tar.gz: $(du -h .gpu/site.tar.gz | cut -f1) (carry .gpu to the GPU machine)"
