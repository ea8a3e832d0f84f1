#!/usr/bin/env bash
# The digits recipe on 1 GPU and on 2 GPUs (torchrun, DDP over NCCL) with the same global
# batch; copies both runs' metrics and eval reports to $OUT/ddp/ and prints a comparison.
#   bash benchmarks/ddp_check.sh [STEPS]     (after run_gpu.sh's installs)
set -euo pipefail
STEPS=${1:-300}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT/ddp"
export PYTHONUNBUFFERED=1
python3 -m avgkit.train digits train.steps="$STEPS" output_dir=/tmp/ddp_1gpu 2>&1 | tail -n 15
torchrun --standalone --nproc_per_node 2 -m avgkit.train digits train.steps="$STEPS" output_dir=/tmp/ddp_2gpu 2>&1 | tail -n 15
for run in 1gpu 2gpu; do
  cp "/tmp/ddp_$run/metrics.jsonl" "$OUT/ddp/metrics_$run.jsonl"
  cp "/tmp/ddp_$run/eval.json" "$OUT/ddp/eval_$run.json"
  cp "/tmp/ddp_$run/samples.png" "$OUT/ddp/samples_$run.png"
done
python3 - "$OUT/ddp" <<'PY'
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
