"""Do GPU samples depend on the batch size? AiM-B (random weights, bf16), with and without ``decode_width``.

Samples the same 64 images (seed 0, image i of class i) at batch sizes 8, 16, 32 and 64
and counts the images whose tokens differ from the batch-64 run; then the same with
``decode_width=32`` (every group of 32 decoded alone, the last one padded), where every
batch size should give identical tokens.

    python benchmarks/batch_invariance.py [--out FILE] [--smoke]

``--smoke`` runs the same procedure on the CPU with a tiny model (a check of the script).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import write_result  # noqa: E402
from sampling import build_aim  # noqa: E402

from avgkit.plugins import get_registry  # noqa: E402
from avgkit.sample.ar import ARSampler, ARSamplerConfig  # noqa: E402

N = 64


def codes_at(backbone, cond, batch: int, width: int | None, device: str) -> torch.Tensor:
    sampler = ARSampler(ARSamplerConfig(cfg_scale=2.0, top_k=600, top_p=0.98, decode_width=width))
    labels = torch.arange(N, device=device) % cond.num_classes
    parts = [sampler.sample(backbone, cond, labels[s : s + batch], seed=0, index=torch.arange(s, s + batch))
             for s in range(0, N, batch)]
    return torch.cat(parts).cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        reg = get_registry()
        spec, cspec = reg.get("backbone", "mamba2"), reg.get("conditioner", "adaln")
        backbone = spec.factory(spec.resolve("tiny", {"vocab_size": 64, "num_tokens": 8})).eval()
        cond = cspec.factory(cspec.resolve(None, {"num_classes": 10}), dim=backbone.dim,
                             num_layers=backbone.num_layers).eval()
    else:
        backbone, cond = build_aim("aim-b")
    rows = []
    for width in (None, 32):
        ref = codes_at(backbone, cond, 64, width, device)
        for batch in (8, 16, 32):
            got = codes_at(backbone, cond, batch, width, device)
            differ = int((got != ref).any(1).sum())
            rows.append({"decode_width": width, "batch": batch, "images_differing_from_batch_64": differ, "of": N})
            print(rows[-1], flush=True)
    if not args.smoke:
        write_result("batch_invariance", {"model": "aim-b bf16, random weights", "rows": rows}, args.out)


if __name__ == "__main__":
    main()
