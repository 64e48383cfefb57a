#!/usr/bin/env bash
# Rehearse the GPU kit here, without a GPU, before a GPU session: a Python 3.12 environment with
# only the GPU image's packages that the server imports (launch/gpu_image.txt, at the image's
# versions where known; every other distribution removed), then .gpu installed exactly as on the
# GPU machine (launch/gpu_env.sh). In it: SGLang's server modules import as if on an H100 with the
# CUDA sgl_kernel stand-in, and a CPU server with SGL_DFLASH (tree K4 N32) gives plain decoding's
# greedy output. Writes bench/results/gpu-kit-rehearsal.md. Needs PyPI (first run: a few GB).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/rehearsal
py312="${PY312:-}"  # the GPU image's Python: 3.12
if [ -z "$py312" ]; then
  if python3.12 --version >/dev/null 2>&1; then py312=python3.12
  elif command -v pyenv >/dev/null && v=$(pyenv versions --bare | grep '^3\.12' | tail -1) && [ -n "$v" ]; then
    py312="$(pyenv root)/versions/$v/bin/python3.12"
  else echo "[rehearse] needs Python 3.12, the GPU image's: set PY312 to its interpreter" >&2; exit 1; fi
fi
if [ ! -f "$venv/.image" ]; then
  bash launch/setup.sh
  rm -rf "$venv"
  "$py312" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # setuptools and wheel (in the image) build this repo there, test_gpu.sh runs pytest and plots with
  # matplotlib (in the image too); the rest is what the server imports.
  PIP_CONSTRAINT="" "$venv/bin/pip" install -q setuptools wheel pytest matplotlib \
    $(.venv/bin/python launch/gpu_kit.py image-requirements)
  extra=$("$venv/bin/python" - <<'PY'
import importlib.metadata as md, re
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
image = {norm(l.split("#")[0].split("==")[0].strip()) for l in open("launch/gpu_image.txt") if l.split("#")[0].strip()}
print(" ".join(sorted({norm(d.metadata["Name"]) for d in md.distributions()} - image - {"pip"})))
PY
)
  [ -z "$extra" ] || { echo "[rehearse] removing what the image lacks: $extra"; "$venv/bin/pip" uninstall -q -y $extra; }
  touch "$venv/.image"
fi
[ -d .gpu/wheels ] || bash launch/pack_gpu.sh
export PY="$PWD/$venv/bin/python" DFLASH_KIT_SITE="$PWD/.cache/rehearsal-site"
source launch/gpu_env.sh
"$PY" launch/gpu_kit.py probe
report=bench/results/gpu-kit-rehearsal.md
"$PY" launch/gpu_kit.py rehearse --out "$report"
# The device command itself, without CUDA: its preflight must pass; the GPU stages skip or stop at CUDA.
out="$(mktemp -d)"
DFLASH_GPU_REHEARSAL=1 OUT="$out" bash launch/test_gpu.sh > "$out/console.log" 2>&1
rc=$?
{ echo "## The device command, rehearsed without CUDA"; echo
  echo "\`DFLASH_GPU_REHEARSAL=1 bash launch/test_gpu.sh\` in the same environment: exit status $rc."
  echo "Its preflight (stage a), pytest and FAIL lines (without CUDA every GPU test skips and stage d stops at"
  echo "inflating the pair on CUDA, as expected):"; echo
  grep -E "^- (torch|kit installed|pytest:)|^FAIL" "$out/stages.md" | cut -c1-400; echo; } >> "$report"
tail -n 12 "$report"
[ $rc -eq 0 ] && ! grep -q "^FAIL: preflight" "$out/stages.md"
