#!/usr/bin/env bash
# Every GPU measurement in one device call (one lease: the machine starts once).
#   run it from the repository root on the GPU machine, with wheels for what the machine
#   lacks in .whl/ (pydantic, pydantic-core, annotated-types, typing-inspection, zarr,
#   numcodecs, donfig, google-crc32c, torch-fidelity, pytest, iniconfig, and mamba-ssm
#   built offline):
#   bash benchmarks/run_gpu.sh [--quick]
# With two or more GPUs the correctness + sampling stream and the training + encoding +
# start-up stream run side by side, one GPU each, then the 1-vs-2-GPU digits check
# (benchmarks/ddp_check.sh); with one GPU the two streams run in turn.
# Results land in $OUT (or benchmarks/results/) as JSON; commit them with the scripts.
set -uo pipefail
QUICK=${1:-}
OUT=${OUT:-benchmarks/results}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . -e plugins/mamba -e plugins/adaln \
  -e plugins/llamagen -e plugins/transformer
run() { echo "== $*"; timeout "${LIMIT:-480}" python3 "$@" 2>&1; }
gpu_tests() {  # the test suite's GPU-marked tests (batch invariance, CUDA eval, ...)
  echo "== pytest -m gpu"
  timeout "${LIMIT:-480}" python3 -m pytest -q -m gpu -p no:cacheprovider tests plugins 2>&1 | tail -n 30
}
kernels_and_sampling() {
  run plugins/mamba/scripts/gpu_check.py --out "$OUT/mamba_gpu_check_h200.json" ${GPU_CHECK_ARGS:-$QUICK}
  run benchmarks/sampling.py $QUICK --out "$OUT/sampling_h200.json"
  run benchmarks/batch_invariance.py --out "$OUT/batch_invariance_h200.json"
  gpu_tests
}
training_and_startup() {
  run benchmarks/train_step.py $QUICK --presets aim-b,aim-l,aim-xl,aim-1b --out "$OUT/train_step_h200.json"
  run benchmarks/vq_encode.py $QUICK --out "$OUT/vq_encode_h200.json"
  run benchmarks/startup.py --out "$OUT/startup_h200.json"
  [ -n "${WITH_SCAN:-}" ] && run benchmarks/ssd_scan.py $QUICK --out "$OUT/ssd_scan_h200.json"
}
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  CUDA_VISIBLE_DEVICES=0 kernels_and_sampling >"$OUT/gpu_run_a.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=1 training_and_startup >"$OUT/gpu_run_b.log" 2>&1
  wait
  timeout 240 bash benchmarks/ddp_check.sh 150 >"$OUT/ddp.log" 2>&1
  tail -n 60 "$OUT/gpu_run_a.log" "$OUT/gpu_run_b.log" "$OUT/ddp.log"
else
  { kernels_and_sampling; training_and_startup; } 2>&1 | tee "$OUT/gpu_run.log"
fi
