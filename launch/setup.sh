#!/usr/bin/env bash
# Create .venv (if missing) and install sgl-dflash with SGLang 0.5.23 and test deps.
# Reuses whatever is already installed; a fresh machine downloads several GB from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
if ! .venv/bin/python -c "import sglang, sgl_dflash, pytest, scipy" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.sgl_dflash_installed ]; then
  echo "[setup] installing sgl-dflash (sglang==0.5.23, torch, ...); first time takes a few minutes"
  .venv/bin/pip install -q -e ".[test]"
  touch .venv/.sgl_dflash_installed
fi
echo "[setup] ready: $(.venv/bin/python -c 'import sglang; print("sglang", sglang.__version__)')"
