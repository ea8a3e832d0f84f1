"""Start-up cost of sampling AiM-B: cold (empty Triton cache) vs warm, apart from steady state.

Runs itself twice in fresh processes sharing a new ``TRITON_CACHE_DIR``: the first pays
Triton compilation and autotuning, the second finds both cached. Each reports the time
to build the model, ``ARSampler.warmup`` (compile, autotune, capture the step graph) and
one steady-state sample call.

    python benchmarks/startup.py [--batch 64] [--out FILE]
    python benchmarks/startup.py --smoke --out FILE   # the tiny preset on the CPU (PyTorch ops, no Triton)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CLASSES = 1000
MODEL = {"preset": "aim-b"}
SMOKE = {"preset": "tiny", "vocab": 64, "tokens": 16}


def child(batch: int, smoke: bool) -> None:
    t0 = time.perf_counter()
    import torch

    sys.path.insert(0, os.path.dirname(__file__))
    from common import build_sampling_aim, device_for, synchronize

    from avgkit.sample.ar import ARSampler, ARSamplerConfig

    device = device_for(smoke)
    bb, cond = build_sampling_aim(**(SMOKE if smoke else MODEL), classes=CLASSES, device=device)
    synchronize(device)
    t1 = time.perf_counter()
    sampler = ARSampler(ARSamplerConfig(cfg_scale=2.0))
    sampler.warmup(bb, cond, batch, device=device)
    synchronize(device)
    t2 = time.perf_counter()
    labels = torch.arange(batch, device=device) % CLASSES
    sampler.sample(bb, cond, labels, seed=1)
    synchronize(device)
    t3 = time.perf_counter()
    print(json.dumps({"import_and_build_s": round(t1 - t0, 2), "warmup_s": round(t2 - t1, 2),
                      "steady_sample_s": round(t3 - t2, 3)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes on the CPU: checks that the script runs (its numbers mean nothing)")
    args = ap.parse_args()
    batch = 2 if args.smoke else args.batch
    if args.child:
        return child(batch, args.smoke)
    sys.path.insert(0, os.path.dirname(__file__))
    from common import smoke_out, write_result

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache)
        for label in ("cold", "warm"):
            cmd = [sys.executable, __file__, "--child", "--batch", str(batch)] + (["--smoke"] if args.smoke else [])
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode:  # show why the child failed, not just that it did
                sys.stderr.write(out.stdout + out.stderr)
                raise SystemExit(f"{label} start failed (exit {out.returncode})")
            row = {"start": label, "batch": batch, **json.loads(out.stdout.strip().splitlines()[-1])}
            print(row, flush=True)
            rows.append(row)
    model = SMOKE["preset"] if args.smoke else MODEL["preset"]
    write_result("startup", {"model": model, "rows": rows}, smoke_out("startup", args.out, args.smoke))


if __name__ == "__main__":
    main()
