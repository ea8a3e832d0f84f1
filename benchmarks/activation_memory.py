"""Activation memory of one AiM block in training, with and without recomputed norms, and the
per-GPU peak of a whole training step for every AiM size (any machine).

Counts the bytes of the distinct tensors autograd keeps for backward during the forward
of a 1- and a 2-layer AiM-B (bf16 autocast, PyTorch kernels on the CPU, batch 2 x 256
tokens); the difference is one block. The norms' share scales with batch x tokens
alone, so it carries over to the GPU; the scan's share differs there (the Triton scan
keeps x, dt, B, C and its chunk sums, not the PyTorch path's quadratic terms).

Per-GPU peak (``peak`` in the output): one bf16 training step of each preset at batch 64
runs on the meta device (nothing is allocated; the Triton scan's fake kernels stand for
it, so its saved set is the GPU's) while every tensor created is counted until freed.
The dynamic peak (activations, loss, gradients in bf16) plus 16 bytes per parameter
(fp32 weights and gradients, AdamW's two moments) is the estimate; allocator caching
and cuBLAS workspaces are not counted. With the plain loss and no checkpointing it
gives 17.2 GiB for AiM-B, where an H100 measured 17.3 GiB.

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


PEAK_PRESETS = {"aim-b": ("adaln", {}), "aim-l": ("adaln-group", {"groups": 4}),
                "aim-xl": ("adaln-group", {"groups": 4}), "aim-1b": ("adaln-group", {"groups": 4})}
PEAK_SETTINGS = [("plain", False, "none"), ("chunked", True, "none"), ("chunked", True, "every_n"),
                 ("chunked", True, "blocks")]
GPU_GIB = 80


def step_peak_gib(preset: str, batch: int, *, fused: bool, checkpointing: str, tokens: int = TOKENS,
                  vocab: int = VOCAB, cond: tuple[str, dict] = ("adaln", {}), options: dict | None = None) -> dict:
    """Estimated per-GPU peak of one bf16 training step (meta device; see the module doc)."""
    import avgkit_mamba.mixer as mixer
    from avgkit_mamba.ops.triton_ssd import chunk_scan_triton

    from avgkit.build import ARModel
    from avgkit.testing.memory import PeakMemory

    reg = get_registry()
    spec, cspec = reg.get("backbone", "mamba2"), reg.get("conditioner", cond[0])
    saved_scan = mixer.chunk_scan
    mixer.chunk_scan = lambda *a, impl=None, **k: chunk_scan_triton(*a, **k)  # the GPU's kernels, as fakes
    try:
        with torch.device("meta"):
            backbone = spec.factory(spec.resolve(preset, {"vocab_size": vocab, "num_tokens": tokens,
                                                          "activation_checkpointing": checkpointing,
                                                          **(options or {})}))
            conditioner = cspec.factory(cspec.resolve(None, {"num_classes": 1000, **cond[1]}), dim=backbone.dim,
                                        num_layers=backbone.num_layers)
            model = ARModel(backbone, conditioner).to(torch.bfloat16).train()  # autocast's dtypes
        model.fused_loss = fused
        n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        codes = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
        labels = torch.zeros(batch, dtype=torch.long, device="meta")
        with PeakMemory() as mem:
            loss = model(codes, labels, loss=True)
            kept = mem.current
            loss.backward()
    finally:
        mixer.chunk_scan = saved_scan
    static = 16 * n  # fp32 weights + fp32 gradients + AdamW m and v (the bf16 gradients counted above: weight copies)
    return {"params": n, "kept_for_backward_MiB": round(kept / 2**20, 1),
            "dynamic_peak_MiB": round(mem.peak / 2**20, 1), "peak_GiB": round((static + mem.peak) / 2**30, 1)}


def peak_table(batch: int, presets: dict, **size) -> list[dict]:
    rows = []
    for preset, cond in presets.items():
        for loss, fused, ckpt in PEAK_SETTINGS:
            row = {"preset": preset, "batch": batch, "loss": loss, "activation_checkpointing": ckpt,
                   **step_peak_gib(preset, batch, fused=fused, checkpointing=ckpt, cond=cond, **size)}
            row[f"fits_{GPU_GIB}_GiB"] = row["peak_GiB"] < GPU_GIB
            rows.append(row)
            print(row, flush=True)
    return rows


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
    if args.smoke:
        peak = peak_table(2, {"tiny": ("adaln-group", {"groups": 2})}, tokens=size["tokens"], vocab=size["vocab"],
                          options={"chunk_size": 16})  # the Triton scan's smallest chunk
    else:
        peak = peak_table(64, PEAK_PRESETS)
    write_result("activation_memory", {"model": f"{size['preset']} block (PyTorch path)", "batch": BATCH,
                                       "tokens": size["tokens"], "rows": rows, "peak": peak},
                 smoke_out("activation_memory", args.out, args.smoke))


if __name__ == "__main__":
    main()
