#!/usr/bin/env bash
# GPU checks on a lent GPU machine (no package registry) as ONE device command, with the kit carried.
#
#   device command, carry [".gpu"], timeout_s 570:
#     bash launch/test_gpu.sh            # stages a-c, then d while more than 300 s of the budget are left
#     bash launch/test_gpu.sh --sweep    # stage a, then stage d with all the time (modes set 1)
#     bash launch/test_gpu.sh --sweep 2  # the same with modes set 2 (sweep_modes)
#   DFLASH_GPU_BUDGET_S=420 bash launch/test_gpu.sh   # a-c only, at most 7 min (timeout_s 460)
#   bash launch/test_gpu.sh --bare [pytest args]      # kernels and the step-cost benches only (below)
# Then give the machine back. Read $OUT/stages.md first.
#
# .gpu/ is the kit `bash launch/pack_gpu.sh` builds on a machine with the registry; launch/gpu_env.sh,
# sourced here, installs it and this package (no download) and exports PY. Every Python process runs
# from a scratch folder: from the repo root, `python -m ...` would import the source tree's sgl_dflash,
# which lacks sgl_dflash.kernels (they ship from kernels/), instead of the installed package.
#
# Stages, most important first; each one's result is appended to $OUT as it ends (the run tool brings
# $OUT back even when the command is killed); the whole run keeps to DFLASH_GPU_BUDGET_S (530 s).
#   a. preflight, failing fast: GPU, nvcc, the kit, versions, every module the servers import, the plugin's
#      entry point, and that the installed sgl_dflash (not the source tree) is the one imported.
#   b. tests/gpu/test_server_gpu.py: on the shipped tiny pair with FlashInfer, CUDA graphs and overlap
#      scheduling, plain, chain, trees K2 N8 and K4 N32 and adaptive servers started together; plain vs the
#      fp32 target; greedy output equal to plain decoding's on 32 held-out prompts at concurrency 1 and 16;
#      penalties exact; tree branches taken. If plain decoding does not start for a kernel build or head-dim
#      error (FlashInfer's kernels may not take the pair's head_dim 32), once more on the pair padded to
#      head_dim 128 (sgl_dflash.inflate: the same tokens in exact arithmetic).
#   c. (same run) draft and verify CUDA graphs captured and replayed, from the worker's counters in
#      GET /server_info and SGLang's capture times; then the cold-start table, the JIT builds per module
#      (FlashInfer, SGLang, Triton caches) and the Triton tree kernels against their references.
#   d. the serving sweep (bench/compare.py: SGLang's bench_serving) on the Qwen3-8B-shaped inflated pair at
#      concurrency 1, 4, 16 and 64, stopped cleanly at the budget; a run cut short is summarized from the
#      levels it completed (tests/gpu/gpu_report.py sweep).
# $OUT (7 files): stages.md (every stage's result, the tables, one line per test), preflight.log, pytest.log,
# servers.log (each server's log, head and tail), sweep.md + sweep.png (the report or the partial table),
# sweep.log.
#
# --bare: the Triton kernels on the GPU against their references, FlashInfer's attention with the tree mask,
# the step-cost table of a Llama-3-8B-shaped target (bench/gpu_step_cost.py), what our eager tree stages add
# per step (bench/gpu_tree_overhead.py) and what a tree's mask adds to verify attention (bench/gpu_mask_cost.py).
# With the kit it uses the installed package; without it, the machine's python3 and the kernels laid out by
# hand as before (FlashInfer where an old .gpu/site.tar.gz travelled).
set -o pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
MODE=full SWEEP_SET=1
case "${1:-}" in
  --bare) MODE=bare; shift ;;
  --sweep) MODE=sweep; shift; if [ "${1:-}" = 2 ]; then SWEEP_SET=2; shift; fi ;;
esac
# A rehearsal on a machine without a GPU: DFLASH_GPU_ENV names another env script, and
# DFLASH_GPU_REHEARSAL=1 lets the preflight pass without CUDA (the GPU tests then skip).
GPU_ENV="${DFLASH_GPU_ENV:-launch/gpu_env.sh}"

if [ "$MODE" = bare ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  if [ -d .gpu/wheels ] && [ -f "$GPU_ENV" ]; then
    # shellcheck disable=SC1090
    source "$GPU_ENV"
    work="$(mktemp -d)" && cd "$work" || exit 1
    "${PY:-python3}" -m pytest "$REPO/tests/gpu/test_kernels_cuda.py" -p no:cacheprovider -q "$@"
    for context in 1024 4096; do "${PY:-python3}" "$REPO/bench/gpu_step_cost.py" --context "$context"; done
    "${PY:-python3}" "$REPO/bench/gpu_tree_overhead.py"
    "${PY:-python3}" "$REPO/bench/gpu_mask_cost.py"
    exit
  fi
  set -e
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

# ---------------------------------------------------------------- the device run
T0=$(date +%s)
BUDGET="${DFLASH_GPU_BUDGET_S:-530}"
WORK="$(mktemp -d /tmp/sgl_dflash_gpu.XXXXXX)"
OUT="${OUT:-$WORK/out}"
mkdir -p "$OUT" "$WORK/logs" "$WORK/sweep"
STAGES="$OUT/stages.md"
# Every process this run starts inherits this; whatever is left at the end is stopped by it (by pid).
# (The knobs here are DFLASH_GPU_*, not SGL_*: SGLang rewrites every SGL_* variable to SGLANG_*, with a
# warning in each of its processes.)
export DFLASH_GPU_RUN="sgl-dflash-gpu-$$-$T0"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export DFLASH_GPU_RESULTS="$STAGES" DFLASH_GPU_LOGS="$WORK/logs"

# The serving sweep (stage d), one server at a time (SGLang's memory defaults): the kit's server flags
# (DFLASH_GPU_SERVER_ARGS from gpu_env.sh: FlashInfer attention, no prefill CUDA graphs) and decode CUDA
# graphs up to batch 64, the largest concurrency (fewer graphs to capture at each start).
sweep_modes() {
  local serve="${DFLASH_GPU_SERVER_ARGS:---attention-backend flashinfer --disable-prefill-cuda-graph}"
  serve="$serve --cuda-graph-max-bs-decode 64"
  local tree32="--speculative-eagle-topk 4 --speculative-num-draft-tokens 32"
  if [ "$SWEEP_SET" = 2 ]; then
    echo "plain=$serve,DFLASH=$serve,SGL_DFLASH chain=$serve,SGL_DFLASH tree k4 n8=$serve --speculative-eagle-topk 4 --speculative-num-draft-tokens 8"
  else
    echo "plain=$serve,DFLASH=$serve,SGL_DFLASH tree k4 n32=$serve $tree32,SGL_DFLASH adaptive k4 n32=$serve $tree32 --speculative-adaptive"
  fi
}
SWEEP_ARGS=(--device cuda --concurrency 1,4,16,64 --rounds 1 --requests-per-slot 2 --min-requests 8)
# >>> FILL IN (sgl_dflash/inflate.py's owner): the arguments after OUT with which sgl_dflash.inflate makes the
# Qwen3-8B-shaped pair on this machine (bf16, random weights drawn on the GPU), run as inflate.main([OUT, *ARGS]);
# add --check to compare it with the shipped pair there (OUT/check.json, copied into stages.md; ~1 min more).
INFLATE_8B_ARGS="${DFLASH_GPU_INFLATE_8B_ARGS:---like qwen3-8b --dtype bfloat16 --device cuda}"

elapsed() { echo $(( $(date +%s) - T0 )); }
until_s() { local s=$(( $1 - $(date +%s) )); echo $(( s < 1 ? 1 : s )); }  # seconds to epoch $1 (timeout 0 = none)
left() { echo $(( T0 + BUDGET - $(date +%s) )); }
say() { printf '%s\n' "$*" | tee -a "$STAGES"; }
pytest_summary() {  # pytest's closing line (a warning printed at exit may follow it)
  grep -E "[0-9]+ (passed|failed|skipped|errors?|deselected)|no tests ran" "$OUT/pytest.log" | tail -n 1 | tr -d '='
}
stage() { say ""; say "## $* (at $(elapsed) s of $BUDGET)"; }

stop_leftovers() {
  # Processes of this run still up (a server whose test run was cut): found by the inherited marker.
  local pids=() p
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$$" ] && continue
    grep -qs "sglang\|sgl_dflash\|multiprocessing\|python" "$p/cmdline" 2>/dev/null || continue
    if tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -qx "DFLASH_GPU_RUN=$DFLASH_GPU_RUN"; then
      pids+=("${p#/proc/}")
    fi
  done
  [ "${#pids[@]}" -eq 0 ] && return
  say "- stopping ${#pids[@]} leftover processes of this run: ${pids[*]}"
  kill -TERM "${pids[@]}" 2>/dev/null; sleep 5; kill -KILL "${pids[@]}" 2>/dev/null
}

collect_logs() {
  local f
  for f in "$WORK"/logs*/*.log "$WORK"/sweep/sgl_dflash_serving_*/*.log; do
    [ -f "$f" ] || continue
    { echo "===== ${f#"$WORK"/} ($(wc -l < "$f") lines; first 80, last 300) ====="
      if [ "$(wc -l < "$f")" -le 380 ]; then cat "$f"; else head -n 80 "$f"; echo "[...]"; tail -n 300 "$f"; fi
    } >> "$OUT/servers.log"
  done
}

finish() {
  local rc=$?
  stop_leftovers
  collect_logs
  say ""
  say "**End** at $(elapsed) s, exit status $rc; results in $OUT"
}
trap finish EXIT

# Runs the server tests until the epoch $1 (tests not begun by $1 - 20 s are skipped); pair dir in $2 or the shipped one.
server_tests() {
  local end=$1
  ( cd "$WORK" && DFLASH_GPU_DEADLINE=$(( end - 20 )) DFLASH_GPU_PAIR="${2:-}" \
      timeout -s INT -k 30 "$(until_s "$end")" \
      "$PY" -m pytest "$REPO/tests/gpu/test_server_gpu.py" -p no:cacheprovider -q ) >> "$OUT/pytest.log" 2>&1
}

# Runs compare.py on the inflated pair until the epoch $1 (SIGINT then: its servers are stopped).
sweep() {
  local end=$1 modes pair="$WORK/qwen3-8b-like" t rc
  modes="$(sweep_modes)"
  say "- modes: $modes"
  t=$(date +%s)
  # shellcheck disable=SC2086
  ( cd "$WORK" && timeout -s INT -k 30 "$(until_s "$end")" "$PY" -c \
      'import sys; from sgl_dflash.inflate import main; main(sys.argv[1:])' "$pair" $INFLATE_8B_ARGS ) \
    >> "$OUT/sweep.log" 2>&1
  rc=$?
  say "- inflated pair made in $(( $(date +%s) - t )) s (exit status $rc): $(du -sh "$pair" 2>/dev/null | cut -f1)"
  [ $rc -eq 0 ] || { say "FAIL: inflating the pair; see sweep.log"; tail -n 20 "$OUT/sweep.log" >> "$STAGES"; return 1; }
  if [ -f "$pair/check.json" ]; then say "- the inflated pair against the shipped pair (check.json):"; cat "$pair/check.json" >> "$STAGES"; fi
  t=$(date +%s)
  if [ $(( end - t )) -lt 90 ]; then say "- no time left for compare.py"; return 1; fi
  ( cd "$WORK" && TMPDIR="$WORK/sweep" PYTHONPATH="$REPO/bench${PYTHONPATH:+:$PYTHONPATH}" \
      timeout -s INT -k 30 "$(until_s "$end")" "$PY" "$REPO/bench/compare.py" "${SWEEP_ARGS[@]}" \
      --target "$pair/target" --draft "$pair/draft" --modes "$modes" --out "$OUT/sweep.md" ) >> "$OUT/sweep.log" 2>&1
  rc=$?
  say "- compare.py ran $(( $(date +%s) - t )) s, exit status $rc"
  grep -E "^\[bench" "$OUT/sweep.log" | sed 's/^/    /' >> "$STAGES"
  if [ ! -s "$OUT/sweep.md" ]; then
    ( cd "$WORK" && for w in "$WORK"/sweep/sgl_dflash_serving_*; do
        "$PY" "$REPO/tests/gpu/gpu_report.py" sweep "$w"; done ) > "$OUT/sweep.md" 2>&1
    say "- the sweep did not finish: the levels it completed are in sweep.md"
  fi
  cat "$OUT/sweep.md" >> "$STAGES"
}

# ---------------------------------------------------------------- a. preflight
stage "a. preflight"
{
  echo "# $(date -u +%FT%TZ) $(uname -n), $(nproc) cores"
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
  nvidia-smi
  command -v nvcc && nvcc --version | tail -n 2
  free -g | head -n 2; df -h /tmp | tail -n 1
} >> "$OUT/preflight.log" 2>&1
say "- GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | head -n 1); $(nproc) cores; nvcc: $(command -v nvcc >/dev/null && nvcc --version | grep -o 'release [0-9.]*' || echo none)"
if [ ! -d .gpu ]; then say "FAIL: no .gpu/ here: carry [\".gpu\"], built by bash launch/pack_gpu.sh"; exit 2; fi
t=$(date +%s)
# shellcheck disable=SC1090
source "$GPU_ENV" >> "$OUT/preflight.log" 2>&1 || { say "FAIL: $GPU_ENV (see preflight.log)"; exit 2; }
set +eu -o pipefail  # whatever the env script set: a failing stage must not end the run
PY="${PY:-python3}"
say "- kit installed by $GPU_ENV in $(( $(date +%s) - t )) s"
( cd "$WORK" && timeout 240 "$PY" - "$REPO" <<'EOF' ) >> "$OUT/preflight.log" 2>&1
import importlib, importlib.metadata as md, os, sys, time
repo = sys.argv[1]
failed, sweep_failed = [], []
start = time.time()
# What a server imports at start (the HTTP server, the scheduler and its model and attention backend, the
# speculative workers, our plugin and kernels), then the sweep's client (stage d only).
for name in ["pytest", "requests", "torch", "triton", "transformers", "flashinfer", "tvm_ffi", "sgl_kernel", "sglang",
             "sglang.srt.entrypoints.http_server", "sglang.srt.managers.tokenizer_manager",
             "sglang.srt.managers.scheduler", "sglang.srt.managers.detokenizer_manager",
             "sglang.srt.models.qwen3", "sglang.srt.layers.attention.flashinfer_backend",
             "sglang.srt.speculative.dflash_worker_v2", "sgl_dflash.plugin", "sgl_dflash.worker",
             "sgl_dflash.kernels.tree_build", "sgl_dflash.kernels.custom_mask", "sgl_dflash.inflate",
             "sglang.benchmark.serving", "matplotlib"]:
    sweep_only = name in ("sgl_dflash.inflate", "sglang.benchmark.serving", "matplotlib")
    t = time.time()
    try:
        importlib.import_module(name)
        print(f"import {name}: {time.time() - t:.1f} s")
    except Exception as e:  # noqa: BLE001
        (sweep_failed if sweep_only else failed).append(name)
        print(f"import {name}: FAILED: {e!r}")
import torch, sgl_dflash
plugins = [e.name for e in md.entry_points(group="sglang.srt.plugins")]
versions = {}
for m in ("torch", "triton", "transformers", "flashinfer", "sglang", "sgl_kernel"):
    try:
        versions[m] = importlib.import_module(m).__version__
    except Exception as e:  # noqa: BLE001
        versions[m] = f"? ({e!r:.80})"
cuda = torch.cuda.is_available()
print(f"SUMMARY: {', '.join(f'{k} {v}' for k, v in versions.items())}; torch CUDA {torch.version.cuda}; "
      f"device {torch.cuda.get_device_name(0) if cuda else 'NONE'}"
      f"{' sm_%d%d' % torch.cuda.get_device_capability(0) if cuda else ''}; sglang.srt.plugins entry points "
      f"{plugins}; sgl_dflash from {sgl_dflash.__file__}; imports {time.time() - start:.0f} s"
      + (f"; FAILED imports: {failed}" if failed else "")
      + (f"; FAILED imports for the sweep (stage d): {sweep_failed}" if sweep_failed else ""))
shadowed = sgl_dflash.__file__.startswith(os.path.join(repo, "sgl_dflash", ""))
if shadowed:
    print("FAIL: sgl_dflash is imported from the source tree, which lacks sgl_dflash.kernels")
rehearsal = os.environ.get("DFLASH_GPU_REHEARSAL") == "1"
sys.exit(1 if failed or not (cuda or rehearsal) or "sgl_dflash" not in plugins or shadowed else 4 if sweep_failed else 0)
EOF
rc=$?
say "- $(grep '^SUMMARY' "$OUT/preflight.log" | tail -n 1 | cut -c10-)"
SWEEP_OK=1
if [ $rc -eq 4 ]; then SWEEP_OK=0; rc=0; say "- stage d cannot run here (its imports failed)"; fi
if [ $rc -ne 0 ]; then
  say "FAIL: preflight (exit status $rc):"; grep -E "FAILED|FAIL:|Error" "$OUT/preflight.log" | head -n 20 >> "$STAGES"
  exit 3
fi

# The kit's sgl_kernel stand-in on FlashInfer against float64 formulas (norms, gated activations, sampling
# renorms): every server calls these, and this builds their FlashInfer JIT modules once, before six servers
# start together.
( cd "$WORK" && timeout -s INT -k 10 120 "$PY" -m pytest "$REPO/tests/test_gpu_kit.py" -k cuda \
    -p no:cacheprovider -q ) >> "$OUT/pytest.log" 2>&1
say "- the sgl_kernel stand-in on FlashInfer (tests/test_gpu_kit.py -k cuda): $(pytest_summary)"

# ------------------------------------------------------- b, c. the tiny pair's servers
if [ "$MODE" = full ]; then
  stage "b, c. servers on the shipped pair (tests/gpu/test_server_gpu.py)"
  server_tests $(( T0 + BUDGET - 30 ))
  rc=$?
  say "- pytest: $(pytest_summary) (exit status $rc)"
  # Plain decoding is every check's reference: if it did not start for a kernel build or head-dim error, the
  # pair's head_dim 32 is the likely cause (FlashInfer's kernels dispatch 64, 128, 256 and 512 in places).
  if grep -qx "plain" "$WORK/logs/NOT_STARTED" 2>/dev/null && [ "$(left)" -gt 200 ] && grep -qiE \
      "head_dim|head dim|NUM_MMA_D|static assertion|ninja build failed|build stopped" "$WORK"/logs/*.log; then
    stage "b, c again, on the pair padded to head_dim 128 (plain decoding did not start at head_dim 32)"
    mv "$WORK/logs" "$WORK/logs-head-dim-32" && mkdir "$WORK/logs"
    ( cd "$WORK" && "$PY" -c 'import sys; from sgl_dflash.inflate import main; main(sys.argv[1:])' \
        "$WORK/pair-hd128" --width 1 --depth 1 --head-dim-factor 4 ) >> "$OUT/pytest.log" 2>&1
    server_tests $(( T0 + BUDGET - 30 )) "$WORK/pair-hd128"
    rc=$?
    say "- pytest: $(pytest_summary) (exit status $rc)"
  fi
  stop_leftovers
  stage "cold start: JIT builds by module"
  ( cd "$WORK" && "$PY" "$REPO/tests/gpu/gpu_report.py" jit "$T0" ) >> "$STAGES" 2>&1
  if [ "$(left)" -gt 90 ]; then
    stage "the Triton tree kernels against their references"
    ( cd "$WORK" && timeout -s INT -k 10 $(( $(left) - 30 )) "$PY" -m pytest "$REPO/tests/gpu/test_kernels_cuda.py" \
        -k tree_kernels -p no:cacheprovider -q ) >> "$OUT/pytest.log" 2>&1
    say "- pytest: $(pytest_summary)"
  fi
fi

# ---------------------------------------------------------- d. the serving sweep
if [ "$SWEEP_OK" = 1 ] && { [ "$MODE" = sweep ] || [ "$(left)" -gt 300 ]; }; then
  stage "d. serving sweep on the Qwen3-8B-shaped pair, modes set $SWEEP_SET"
  sweep $(( T0 + BUDGET - 40 ))
  stop_leftovers
  stage "JIT builds by module, after the sweep"
  ( cd "$WORK" && "$PY" "$REPO/tests/gpu/gpu_report.py" jit "$T0" ) >> "$STAGES" 2>&1
elif [ "$SWEEP_OK" = 1 ]; then
  stage "d. serving sweep skipped: $(left) s left (run bash launch/test_gpu.sh --sweep)"
else
  stage "d. serving sweep skipped: its imports failed (preflight.log)"
  [ "$MODE" = sweep ] && exit 3
fi
