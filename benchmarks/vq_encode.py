"""VQ-16 encoding throughput at 256 px (what `avgkit prepare` spends its time on), random weights.

    python benchmarks/vq_encode.py [--quick] [--batch 128] [--out FILE]
    python benchmarks/vq_encode.py --smoke --out FILE   # the small digits preset on the CPU
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import (  # noqa: E402
    add_smoke_flag,
    device_for,
    empty_cache,
    peak_memory_gib,
    reset_peak_memory,
    smoke_out,
    synchronize,
    timed_on,
    write_result,
)

from avgkit.plugins import get_registry  # noqa: E402


def measure(precision: str, batch: int, repeats: int, *, preset: str = "vq-16", device: torch.device | str = "cuda"
            ) -> dict:
    spec = get_registry().get("tokenizer", "llamagen-vq")
    config = spec.resolve(preset)
    tok = spec.factory(config).to(device).eval()
    size = config.image_size
    images = torch.rand(batch, config.channels, size, size, device=device) * 2 - 1
    reset_peak_memory(device)

    def encode() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                                    enabled=precision == "bf16"):
            return tok.encode(images)

    t0 = time.perf_counter()
    encode()
    synchronize(device)
    first = time.perf_counter() - t0
    med, _ = timed_on(device, encode, repeats)
    return {"precision": precision, "batch": batch, "images_per_s": round(batch / med, 1),
            "first_call_s": round(first, 2), "peak_mem_gib": peak_memory_gib(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", default=None)
    add_smoke_flag(ap)
    args = ap.parse_args()
    device = device_for(args.smoke)
    preset, batch = ("digits", 2) if args.smoke else ("vq-16", args.batch)
    repeats = 1 if args.smoke else 2 if args.quick else 5
    rows = []
    for precision in ("fp32", "bf16"):
        rows.append(measure(precision, batch, repeats, preset=preset, device=device))
        print(rows[-1], flush=True)
        empty_cache(device)
    image_size = get_registry().get("tokenizer", "llamagen-vq").resolve(preset).image_size
    write_result("vq_encode", {"tokenizer": f"llamagen-vq:{preset}", "image_size": image_size, "rows": rows},
                 smoke_out("vq_encode", args.out, args.smoke))


if __name__ == "__main__":
    main()
