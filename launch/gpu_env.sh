# Source from the repo root on a GPU machine without a package registry (the lent H100/H200:
# Python 3.12, torch, Triton), with .gpu carried (built here by launch/pack_gpu.sh):
#   source launch/gpu_env.sh
# (No SGL_ prefix on these variables: SGLang warns about every SGL_* variable as a deprecated SGLANG_*.)
# Installs the kit's wheels and this repo (pip --no-index --no-deps) into one site folder, puts it
# and the sgl_kernel stand-in (sgl_dflash/cuda_sgl_kernel) on PYTHONPATH, and exports
#   PY                          the interpreter to use
#   DFLASH_GPU_SERVER_ARGS  flags every GPU server needs with the kit: FlashInfer attention
#                               (SGLang's Hopper default, fa3, lives in the real sgl_kernel) and no
#                               prefill CUDA graphs (they need sgl_kernel.weak_ref_tensor); decode,
#                               draft and verify graphs are unaffected.
if [ ! -d .gpu/wheels ]; then
  echo "[gpu_env] .gpu/wheels is missing: run 'bash launch/pack_gpu.sh' where PyPI is reachable and carry .gpu" >&2
  return 1 2>/dev/null || exit 1
fi
export PY="${PY:-python3}"
DFLASH_KIT_SITE="${DFLASH_KIT_SITE:-/tmp/sgl_dflash_site}"
if [ ! -f "$DFLASH_KIT_SITE/.installed" ] || [ -n "$(find sgl_dflash kernels pyproject.toml .gpu/wheels -newer "$DFLASH_KIT_SITE/.installed" -print -quit)" ]; then
  _t0=$(date +%s)
  rm -rf "$DFLASH_KIT_SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$DFLASH_KIT_SITE" .gpu/wheels/*.whl \
    && "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$DFLASH_KIT_SITE" . \
    || { echo "[gpu_env] installing the kit failed" >&2; return 1 2>/dev/null || exit 1; }
  touch "$DFLASH_KIT_SITE/.installed"
  echo "[gpu_env] kit installed in $DFLASH_KIT_SITE in $(( $(date +%s) - _t0 )) s"
fi
export PYTHONPATH="$DFLASH_KIT_SITE/sgl_dflash/cuda_sgl_kernel:$DFLASH_KIT_SITE${PYTHONPATH:+:$PYTHONPATH}"
export SGLANG_SKIP_SGL_KERNEL_VERSION_CHECK=1          # the stand-in is not the pinned sgl_kernel
export SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python   # the Rust tree core is stripped (torch ABI)
export TVM_FFI_DISABLE_TORCH_C_DLPACK=1                # else tvm-ffi compiles a torch extension at import
export DFLASH_GPU_SERVER_ARGS="--attention-backend flashinfer --disable-prefill-cuda-graph"
