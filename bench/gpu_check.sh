#!/usr/bin/env bash
# GPU check, run on a machine with a CUDA GPU (the device machine: torch 2.11, Python 3.12):
# builds kga_fast._C with its CUDA kernels, runs the CUDA tests, then the benchmarks, and
# writes a short report to $OUT/gpu_check.md (stdout too). Budget: under 6 minutes.
#
#   bash bench/gpu_check.sh            # all sections
#   bash bench/gpu_check.sh build tests   # only these (section keys below)
#
# To add a check, add one `section KEY "Title" SECONDS command...` line to the SECTIONS
# block; each runs under its own time limit, and a failed one does not stop the next.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
OUT_DIR=${OUT:-}
REPORT=${OUT_DIR:+$OUT_DIR/gpu_check.md}
LOG=$(mktemp)
ONLY=" $* "
FAILED=()
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
[ -n "$REPORT" ] && : > "$REPORT"

say() {
  echo "$*"
  if [ -n "$REPORT" ]; then echo "$*" >> "$REPORT"; fi
}

# section KEY TITLE SECONDS COMMAND...: runs COMMAND with a time limit; reports status,
# duration and the tail of its output.
section() {
  local key=$1 title=$2 limit=$3
  shift 3
  if [ "$ONLY" != "  " ] && [[ "$ONLY" != *" $key "* ]]; then return; fi
  local start=$SECONDS rc
  timeout "$limit" "$@" > "$LOG" 2>&1
  rc=$?
  say ""
  say "## $title: $([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)"), $((SECONDS - start)) s"
  say '```'
  say "$(tail -n 40 "$LOG")"
  say '```'
  if [ $rc -ne 0 ]; then FAILED+=("$key"); fi
}

build() {
  # setup.py builds in place: CPU kernels plus, with a CUDA toolkit, csrc/cuda for sm_90.
  "$PY" -m pip install --no-deps --no-build-isolation -e . || "$PY" setup.py build_ext --inplace
}

say "# kga_fast GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
say "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
say "$("$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)' 2>&1)"

# ---- SECTIONS (append yours; the time limits add up to under 6 minutes: keep it so) ----
section build "Build kga_fast._C (CPU + CUDA)" 115 build
section native "Extension has CUDA kernels" 10 "$PY" -c \
  'import kga_fast.native as n; print(n.describe()); assert n.has_device("cuda"), "no CUDA kernels"'
# addopts cleared: pyproject's --benchmark-disable needs pytest-benchmark, which may be absent.
section tests "CUDA tests (pytest -m cuda)" 40 "$PY" -m pytest -q -o addopts="" -rfEs -m cuda tests/test_ops.py tests/test_losses.py tests/test_data.py
section bench "Fused loss benchmark (bf16)" 60 "$PY" bench/bench_losses.py --device cuda --dtype bfloat16 \
  ${OUT_DIR:+--out "$OUT_DIR/bench_losses_cuda.md"}
# ---- pipeline throughput (bench/bench_pipeline.py) ----
# Ours vs the paper loop, resnet18 + vgg11, 4 freeze configs, 30 retain batches each. Each
# measurement rewrites its --out table, so a section stopped by its limit keeps what it measured.
section pipeline "Pipeline throughput: ours vs the paper loop" 60 env KGA_BENCH_STEPS=30 \
  KGA_BENCH_COMPILE=0 KGA_BENCH_FULL=0 KGA_BENCH_PRETRAIN= "$PY" bench/bench_pipeline.py \
  ${OUT_DIR:+--out "$OUT_DIR/bench_pipeline_cuda.md"}
# torch.compile on resnet18 (0) beside both sides, pretraining resnet18-cifar in bf16, and the
# full paper-preset resnet18 run (15 epochs x 25,000).
section pipeline2 "Compile, pretraining, full paper-preset run" 65 env KGA_BENCH_STEPS=30 \
  KGA_BENCH_ARCHS=resnet18 KGA_BENCH_FREEZES=0 KGA_BENCH_COMPILE=1 KGA_BENCH_FULL=1 \
  "$PY" bench/bench_pipeline.py ${OUT_DIR:+--out "$OUT_DIR/bench_pipeline2_cuda.md"}
# ---- end of SECTIONS ----

say ""
if [ ${#FAILED[@]} -eq 0 ]; then say "all sections ok"; else say "failed sections: ${FAILED[*]}"; fi
rm -f "$LOG"
[ ${#FAILED[@]} -eq 0 ]
