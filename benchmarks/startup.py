"""Start-up cost of sampling AiM-B: cold (empty Triton cache) vs warm, apart from steady state.

Runs itself twice in fresh processes sharing a new ``TRITON_CACHE_DIR``: the first pays
Triton compilation and autotuning, the second finds both cached. Each reports the time
to build the model, ``ARSampler.warmup`` (compile, autotune, capture the step graph) and
one steady-state sample call.

    python benchmarks/startup.py [--batch 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(batch: int) -> None:
    t0 = time.perf_counter()
    import torch

    sys.path.insert(0, os.path.dirname(__file__))
    from sampling import CLASSES, build_aim

    from avgkit.sample.ar import ARSampler, ARSamplerConfig

    bb, cond = build_aim("aim-b")
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    sampler = ARSampler(ARSamplerConfig(cfg_scale=2.0))
    sampler.warmup(bb, cond, batch)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    labels = torch.arange(batch, device="cuda") % CLASSES
    sampler.sample(bb, cond, labels, seed=1)
    torch.cuda.synchronize()
    t3 = time.perf_counter()
    print(json.dumps({"import_and_build_s": round(t1 - t0, 2), "warmup_s": round(t2 - t1, 2),
                      "steady_sample_s": round(t3 - t2, 3)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.batch)
    sys.path.insert(0, os.path.dirname(__file__))
    from common import write_result

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache)
        for label in ("cold", "warm"):
            out = subprocess.run([sys.executable, __file__, "--child", "--batch", str(args.batch)], env=env,
                                 capture_output=True, text=True, check=True)
            row = {"start": label, "batch": args.batch, **json.loads(out.stdout.strip().splitlines()[-1])}
            print(row, flush=True)
            rows.append(row)
    write_result("startup", {"model": "aim-b", "rows": rows}, args.out)


if __name__ == "__main__":
    main()
