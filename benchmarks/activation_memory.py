"""Activation memory of one AiM block in training, with and without recomputed norms (any machine).

Counts the bytes of the distinct tensors autograd keeps for backward during the forward
of a 1- and a 2-layer AiM-B (bf16 autocast, PyTorch kernels on the CPU, batch 2 x 256
tokens); the difference is one block. The norms' share scales with batch x tokens
alone, so it carries over to the GPU; the scan's share differs there (the Triton scan
keeps x, dt, B, C and its chunk sums, not the PyTorch path's quadratic terms).

    python benchmarks/activation_memory.py [--out FILE]
    python benchmarks/activation_memory.py --smoke --out FILE   # the tiny preset, seconds
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import add_smoke_flag, smoke_out, write_result  # noqa: E402

from avgkit.plugins import get_registry  # noqa: E402

BATCH, TOKENS, VOCAB, PRESET = 2, 256, 16384, "aim-b"
SMOKE = {"preset": "tiny", "tokens": 16, "vocab": 64}


def saved_bytes(n_layer: int, recompute: bool, *, preset: str = PRESET, tokens: int = TOKENS, vocab: int = VOCAB
                ) -> int:
    reg = get_registry()
    spec, cspec = reg.get("backbone", "mamba2"), reg.get("conditioner", "adaln")
    opts = {"n_layer": n_layer, "vocab_size": vocab, "num_tokens": tokens, "impl": "torch",
            "recompute_norms": recompute}
    torch.manual_seed(0)
    backbone = spec.factory(spec.resolve(preset, opts))
    cond = cspec.factory(cspec.resolve(None, {"num_classes": 1000}), dim=backbone.dim, num_layers=n_layer)
    codes = torch.randint(0, vocab, (BATCH, tokens))
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        backbone(codes, cond(torch.arange(BATCH)))
    return sum(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=None)
    add_smoke_flag(ap)
    args = ap.parse_args()
    size = SMOKE if args.smoke else {"preset": PRESET, "tokens": TOKENS, "vocab": VOCAB}
    rows = []
    for recompute in (False, True):
        per_block = saved_bytes(2, recompute, **size) - saved_bytes(1, recompute, **size)
        rows.append({"recompute_norms": recompute, "block_MiB_batch2": round(per_block / 2**20, 2),
                     "block_GiB_per_64x256_tokens": round(per_block * 64 * 256 / (BATCH * size["tokens"]) / 2**30, 2)})
        print(rows[-1], flush=True)
    rows.append({"saved_by_recompute_GiB_aim_b_24_layers_batch64": round(
        24 * (rows[0]["block_GiB_per_64x256_tokens"] - rows[1]["block_GiB_per_64x256_tokens"]), 1)})
    write_result("activation_memory", {"model": f"{size['preset']} block (PyTorch path)", "batch": BATCH,
                                       "tokens": size["tokens"], "rows": rows},
                 smoke_out("activation_memory", args.out, args.smoke))


if __name__ == "__main__":
    main()
