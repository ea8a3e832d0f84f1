"""Does a faster training path keep the accuracy? The digits recipe, three seeds per path.

Trains the digits recipe with each seed under each path and compares the final losses
(training loss of the last logged window, and the validation loss) with the
seed-to-seed spread of the first path, today's: a path passes when its mean final loss
is within that spread (max - min over seeds) of today's mean.

Paths (recipe overrides on top of digits):

* ``today``: the path before the fast ones (fp32, the full logits, eager);
* ``bf16``: bf16 autocast, the loss by chunks, ``train.compile: auto`` (compiled
  blocks on a GPU) and ``train.cuda_graph: auto`` (the step replayed from a CUDA graph on
  a GPU): the fast path as a GPU run takes it (the GPU defaults);
* ``bf16-residual``: as ``bf16``, with the residual stream in bf16 too.

The tokenizer and the code store are trained and encoded once and shared by every run.

    python benchmarks/precision_check.py [--seeds 0,1,2] [--paths today,bf16,bf16-residual] [--out FILE]
    python benchmarks/precision_check.py --smoke --out FILE   # a few steps of everything (numbers mean nothing)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from common import add_smoke_flag, smoke_out, write_result  # noqa: E402

PATHS = {
    "today": ["train.fused_loss=false", "train.compile=off", "train.cuda_graph=off"],  # before the fast ones
    "bf16": ["train.precision=bf16", "train.fused_loss=true", "train.compile=auto", "train.cuda_graph=auto"],
    "bf16-residual": ["train.precision=bf16", "train.fused_loss=true", "train.compile=auto", "train.cuda_graph=auto",
                      "backbone.residual_in_fp32=false"],
}
SMOKE = ["tokenizer.train.steps=2", "tokenizer.train.log_every=1", "tokenizer.train.ckpt_every=2", "train.steps=4",
         "train.warmup_steps=1", "train.log_every=2", "train.ckpt_every=4", "train.val_every=4",
         "eval.samples_per_class=1", "eval.batch_size=10"]


def train(work: Path, name: str, seed: int, overrides: list[str], extra: list[str]) -> dict:
    out = work / f"{name}-seed{seed}"
    cmd = [sys.executable, "-m", "avgkit", "train", "digits", f"train.seed={seed}", f"output_dir={out}",
           f"tokenizer.weights={work / 'tokenizer.safetensors'}", f"data.store={work / 'codes.zarr'}",
           *extra, *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    evaluation = json.loads((out / "eval.json").read_text()) if (out / "eval.json").exists() else {}
    row = {"path": name, "seed": seed, "final_loss": records[-1]["loss"], "final_val_loss": val[-1] if val else None,
           "seconds": round(time.perf_counter() - t0, 1), "accuracy": _accuracy(evaluation)}
    print(row, flush=True)
    return row


def _accuracy(evaluation: dict) -> float | None:
    for key in ("class_accuracy", "accuracy"):
        if isinstance(evaluation.get(key), (int, float)):
            return evaluation[key]
    for value in evaluation.values():
        if isinstance(value, dict):
            found = _accuracy(value)
            if found is not None:
                return found
    return None


def verdicts(rows: list[dict], paths: list[str]) -> dict:
    out = {}
    base = paths[0]
    for key in ("final_loss", "final_val_loss"):
        ref = [r[key] for r in rows if r["path"] == base and r[key] is not None]
        if not ref:
            continue
        spread = max(ref) - min(ref)
        for path in paths:
            vals = [r[key] for r in rows if r["path"] == path and r[key] is not None]
            if not vals:
                continue
            diff = statistics.mean(vals) - statistics.mean(ref)
            out.setdefault(path, {})[key] = {"mean": round(statistics.mean(vals), 5), "min": round(min(vals), 5),
                                             "max": round(max(vals), 5), "mean_minus_today": round(diff, 5),
                                             "today_spread": round(spread, 5), "within_spread": abs(diff) <= spread}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"the first is the baseline; any of {', '.join(PATHS)}")
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    ap.add_argument("--out", default=None)
    add_smoke_flag(ap)
    args = ap.parse_args()
    paths = args.paths.split(",")
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise SystemExit(f"unknown --paths {unknown}; choose from {', '.join(PATHS)}")
    seeds = [0, 1] if args.smoke else [int(s) for s in args.seeds.split(",")]
    extra = [*SMOKE, "train.device=cpu"] if args.smoke else []
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="avgkit-precision-"))
    work.mkdir(parents=True, exist_ok=True)
    # the smoke run checks the harness: two baseline seeds (the spread needs two), one for the others
    out = smoke_out("precision_check", args.out, args.smoke)
    rows: list[dict] = []
    for seed in seeds:  # seed by seed, so a run stopped at its time limit still holds comparable pairs
        for path in paths if seed == seeds[0] or not args.smoke else paths[:1]:
            rows.append(train(work, path, seed, PATHS[path], extra))
            # after every run: a check stopped at its time limit keeps the runs it finished (verdict later)
            write_result("precision_check", {"recipe": "digits", "seeds": seeds, "rows": rows}, out, quiet=True)
    result = {"recipe": "digits", "seeds": seeds, "paths": {p: PATHS[p] for p in paths}, "rows": rows,
              "verdict": verdicts(rows, paths)}
    print(json.dumps(result["verdict"], indent=2))
    write_result("precision_check", result, out)


if __name__ == "__main__":
    main()
