#!/usr/bin/env bash
# Every GPU measurement in one device call (one lease: the machine starts once).
#   run it from the repository root on the GPU machine, with wheels for what the machine
#   lacks in .whl/ (pydantic, pydantic-core, annotated-types, typing-inspection, zarr,
#   numcodecs, donfig, google-crc32c, torch-fidelity, and mamba-ssm built offline):
#   bash benchmarks/run_gpu.sh [--quick]
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
run() { echo "== $*"; timeout "${LIMIT:-480}" python3 "$@" 2>&1 | tee -a "$OUT/gpu_run.log"; }
run plugins/mamba/scripts/gpu_check.py --out "$OUT/mamba_gpu_check_h200.json"
run benchmarks/ssd_scan.py $QUICK --out "$OUT/ssd_scan_h200.json"
run benchmarks/sampling.py $QUICK --out "$OUT/sampling_h200.json"
run benchmarks/train_step.py $QUICK --out "$OUT/train_step_h200.json"
run benchmarks/vq_encode.py $QUICK --out "$OUT/vq_encode_h200.json"
