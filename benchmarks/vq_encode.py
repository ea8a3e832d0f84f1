"""VQ-16 encoding throughput at 256 px (what `avgkit prepare` spends its time on), random weights.

    python benchmarks/vq_encode.py [--quick] [--batch 128] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import timed, write_result  # noqa: E402

from avgkit.plugins import get_registry  # noqa: E402


def measure(precision: str, batch: int, repeats: int) -> dict:
    spec = get_registry().get("tokenizer", "llamagen-vq")
    tok = spec.factory(spec.resolve("vq-16")).cuda().eval()
    images = torch.rand(batch, 3, 256, 256, device="cuda") * 2 - 1
    torch.cuda.reset_peak_memory_stats()

    def encode() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            return tok.encode(images)

    t0 = time.perf_counter()
    encode()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    med, _ = timed(encode, repeats)
    return {"precision": precision, "batch": batch, "images_per_s": round(batch / med, 1),
            "first_call_s": round(first, 2), "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    for precision in ("fp32", "bf16"):
        rows.append(measure(precision, args.batch, 2 if args.quick else 5))
        print(rows[-1], flush=True)
        torch.cuda.empty_cache()
    write_result("vq_encode", {"tokenizer": "llamagen-vq:vq-16", "image_size": 256, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
