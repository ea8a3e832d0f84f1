#!/usr/bin/env bash
# The digits recipe on 1 GPU and on 2 GPUs (torchrun, DDP over NCCL) with the same global
# batch; copies both runs' metrics and eval reports to $OUT/ddp/ and prints a comparison.
#   bash benchmarks/ddp_check.sh [STEPS]     (after run_gpu.sh's installs)
#   OUT=DIR bash benchmarks/ddp_check.sh --smoke   (2 steps on the CPU, 2 gloo processes; seconds)
# $PYTHON (default python3) runs everything, torchrun included; the runs go to $WORK (default /tmp).
set -euo pipefail
SMOKE=
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
PYTHON=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results}
WORK=${WORK:-/tmp}
EXTRA=()
if [ -n "$SMOKE" ]; then
  STEPS=${1:-2}
  WORK=$(mktemp -d "$WORK/ddp_smoke.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  # a 2-step tokenizer and the store of the first run, in $WORK; one sample per class
  EXTRA=(train.device=cpu train.log_every=1 tokenizer.train.steps=2 "tokenizer.weights=$WORK/tokenizer.safetensors"
         "data.store=$WORK/codes.zarr" eval.samples_per_class=1)
else
  STEPS=${1:-300}
fi
mkdir -p "$OUT/ddp"
export PYTHONUNBUFFERED=1
"$PYTHON" -m avgkit train digits train.steps="$STEPS" output_dir="$WORK/ddp_1gpu" "${EXTRA[@]}" 2>&1 | tail -n 15
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2 -m avgkit train digits train.steps="$STEPS" \
  output_dir="$WORK/ddp_2gpu" "${EXTRA[@]}" 2>&1 | tail -n 15
for run in 1gpu 2gpu; do
  cp "$WORK/ddp_$run/metrics.jsonl" "$OUT/ddp/metrics_$run.jsonl"
  cp "$WORK/ddp_$run/eval.json" "$OUT/ddp/eval_$run.json"
  cp "$WORK/ddp_$run/samples.png" "$OUT/ddp/samples_$run.png"
done
"$PYTHON" - "$OUT/ddp" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
def losses(run):
    rows = [json.loads(l) for l in (d / f"metrics_{run}.jsonl").read_text().splitlines() if l.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "step" in r}
a, b = losses("1gpu"), losses("2gpu")
common = sorted(set(a) & set(b))
diff = max(abs(a[s] - b[s]) for s in common) if common else None
evals = {run: json.loads((d / f"eval_{run}.json").read_text()) for run in ("1gpu", "2gpu")}
summary = {"steps_compared": len(common), "max_abs_loss_diff": diff,
           "final_loss": {"1gpu": a[common[-1]], "2gpu": b[common[-1]]} if common else None,
           "eval": {k: {kk: v for kk, v in e.items() if not isinstance(v, (dict, list))} for k, e in evals.items()}}
(d / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PY
