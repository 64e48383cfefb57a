#!/usr/bin/env bash
# Set up (if needed), start an SGL_DFLASH server on CPU with the bundled tiny
# target/draft pair, send it one request, and keep serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
exec .venv/bin/python -m sgl_dflash.demo "$@"
