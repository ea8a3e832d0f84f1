"""The mixer's gated RMSNorm backward kernel against the copy bandwidth, by launch setting.

At the AiM-B and AiM-L training shapes (batch 64 x 256 rows; 1536 and 2048 channels, one
group; bf16), for each ``ROWSxTILExWARPS`` setting of ``triton_gated_norm`` (rows a
program covers, rows it loads and reduces at once, warps; 0 warps: the kernel's rule):
the backward's median time, the bytes it must move (y, z, dout read; dy, dz written) over
that time, that rate as a fraction of the copy bandwidth measured in the same run, and
each result's largest difference from the first setting's (only the order of the weight
gradient's fp32 sums may differ).

    python benchmarks/gated_norm.py --out gated_norm.json [--settings 16x1x0,16x2x8,32x4x8]
    python benchmarks/gated_norm.py --smoke --out FILE   # tiny shapes on the CPU, Triton interpreted
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if "--smoke" in sys.argv:  # the Triton interpreter must be chosen before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from common import (  # noqa: E402
    add_smoke_flag,
    copy_bandwidth,
    device_for,
    median_ms,
    rel_diff,
    settings,
    smoke_out,
    write_result,
)

ROOT = Path(__file__).resolve().parents[1]
try:
    import avgkit_mamba  # noqa: F401
except ImportError:  # running from a source checkout
    sys.path.insert(0, str(ROOT / "plugins" / "mamba"))

SHAPES = {"aim-b": (64 * 256, 1536), "aim-l": (64 * 256, 2048)}
SMOKE_SHAPES = {"tiny": (10, 32)}
SETTINGS = "16x1x0,16x2x0,16x2x8,16x4x8,32x2x8,32x4x8,8x2x8,8x1x4"
SMOKE_SETTINGS = "4x1x0,4x2x0"


def inputs(rows: int, d: int, device: torch.device, dtype: torch.dtype) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
    wide = r(rows, d + 64).to(dtype)  # z as a column slice of a wider row, as in in_proj's output
    return {"y": r(rows, d).to(dtype), "z": wide[:, :d], "dout": r(rows, d).to(dtype), "w": 1 + 0.1 * r(d)}


def measure(t: dict, device: torch.device, warmup: int, reps: int) -> tuple[float, list[torch.Tensor]]:
    from avgkit_mamba.ops.triton_gated_norm import gated_norm_bwd, gated_norm_fwd

    rows, d = t["y"].shape
    _, rstd = gated_norm_fwd(t["y"], t["z"], t["w"], 1e-5, d)
    dy = torch.empty_like(t["y"])
    dz_buf = torch.empty(rows, d + 64, device=device, dtype=t["y"].dtype)
    dz = dz_buf[:, :d]

    def bwd() -> torch.Tensor:
        return gated_norm_bwd(t["dout"], t["y"], t["z"], t["w"], rstd, d, dy, dz)

    dw = bwd()
    out = [dy.float().clone(), dz.float().clone(), dw.clone()]
    return median_ms(device, bwd, warmup, reps), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default=SETTINGS, help="comma-separated ROWSxTILExWARPS (0 warps: the rule)")
    ap.add_argument("--out", default=None)
    add_smoke_flag(ap)
    args = ap.parse_args(argv)
    device = device_for(args.smoke, "gated_norm")
    from avgkit_mamba.ops import triton_gated_norm as tgn

    shapes, spec = (SMOKE_SHAPES, SMOKE_SETTINGS) if args.smoke else (SHAPES, args.settings)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    warmup, reps = (0, 1) if args.smoke else (10, 50)
    copy_bw = None if args.smoke else copy_bandwidth()
    results: dict[str, dict] = {}
    for name, (rows, d) in shapes.items():
        t = inputs(rows, d, device, dtype)
        moved = 5 * rows * d * t["y"].element_size()
        first = None
        per: dict[str, dict] = {}
        for entry in spec.split(","):
            n_rows, tile, warps = (int(v) for v in entry.split("x"))
            with settings([(tgn, "ROWS", n_rows), (tgn, "ROW_TILE", tile), (tgn, "BWD_WARPS", warps or None)]):
                ms, out = measure(t, device, warmup, reps)
            first = first or out
            diff = max(rel_diff(a, b) for a, b in zip(out, first, strict=True))
            row = {"ms": round(ms, 4), "bytes_per_s": round(moved / (ms / 1e3)), "max_rel_diff": diff}
            if copy_bw:
                row["of_copy_bandwidth"] = round(moved / (ms / 1e3) / copy_bw, 3)
            per[entry] = row
            print(name, entry, row, flush=True)
        results[name] = per
    best = {name: min(per, key=lambda e: per[e]["ms"]) for name, per in results.items()}
    report = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "none (CPU smoke run)",
              "copy_bandwidth_bytes_per_s": copy_bw, "dtype": str(dtype), "results": results, "fastest": best}
    print(json.dumps({"fastest": best}), flush=True)
    write_result("gated_norm", report, smoke_out("gated_norm", args.out, args.smoke), quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
