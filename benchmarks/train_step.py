"""Training throughput: avgkit's AiM (Triton scan) vs the same stack on mamba-ssm's unfused Mamba-2.

Synthetic codes (batch 64 x 256 tokens, vocab 16384, 1000 classes), bf16 autocast,
fused AdamW, gradient clipping, label dropout: the step the trainer runs. Reports
tokens/s after warm-up, peak memory, the first step's time, and MFU on a 6N basis and
on full FLOPs (6N plus the SSD scan) against --peak-tflops.

    python benchmarks/train_step.py [--quick] [--presets aim-b,aim-l] [--steps 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from common import import_mamba_ssm, write_result  # noqa: E402

from avgkit.build import ARModel  # noqa: E402
from avgkit.plugins import get_registry  # noqa: E402

VOCAB, TOKENS, CLASSES = 16384, 256, 1000
CONDITIONER = {"aim-b": ("adaln", {}), "aim-l": ("adaln-group", {"groups": 4}),
               "aim-xl": ("adaln-group", {"groups": 4}), "aim-1b": ("adaln-group", {"groups": 4})}


def build(preset: str) -> ARModel:
    reg = get_registry()
    spec = reg.get("backbone", "mamba2")
    torch.manual_seed(0)
    backbone = spec.factory(spec.resolve(preset, {"vocab_size": VOCAB, "num_tokens": TOKENS}))
    name, opts = CONDITIONER[preset]
    cspec = reg.get("conditioner", name)
    cond = cspec.factory(cspec.resolve(None, {"num_classes": CLASSES, **opts}), dim=backbone.dim,
                         num_layers=backbone.num_layers)
    return ARModel(backbone, cond).cuda()


def scan_flops_per_token(model: ARModel) -> float:
    """Forward FLOPs of the chunked SSD per token, all layers (intra-chunk + state terms)."""
    c = model.backbone.config  # from the config, so the mamba-ssm stack counts the same
    q, n, p, h = min(c.chunk_size, TOKENS), c.d_state, c.headdim, c.expand * c.d_model // c.headdim
    return c.n_layer * 2 * (q * n * c.ngroups + q * p * h + 2 * n * p * h)


def run(model: ARModel, batch: int, steps: int, label: str, peak: float) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in {id(p): p for p in params}.values())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    codes = torch.randint(0, VOCAB, (batch, TOKENS), device="cuda", generator=gen)
    labels = torch.randint(0, CLASSES, (batch,), device="cuda", generator=gen)
    torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model.backbone(codes, model.conditioner(model.conditioner.drop_labels(labels, gen)))
            loss = F.cross_entropy(logits.float().flatten(0, 1), codes.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    tok_s = batch * TOKENS / dt
    flops_6n = 6 * n_params * tok_s
    flops_full = flops_6n + 3 * scan_flops_per_token(model) * tok_s
    row = {"model": label, "batch": batch, "params": n_params, "step_s": round(dt, 4), "tokens_per_s": round(tok_s),
           "first_step_s": round(first, 2), "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
           "mfu_6n": round(flops_6n / peak, 4), "mfu_full": round(flops_full / peak, 4)}
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="AiM-B only, 10 steps")
    ap.add_argument("--presets", default="aim-b,aim-l")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 matmul ceiling measured on the device")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--reference-presets", default="aim-b,aim-l", help="presets also run on mamba-ssm's modules")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    presets = ["aim-b"] if args.quick else args.presets.split(",")
    steps = 10 if args.quick else args.steps
    rows, notes = [], []
    have_ref = not args.no_reference and import_mamba_ssm() is not None
    for preset in presets:
        model = build(preset)
        try:
            rows.append(run(model, args.batch, steps, f"avgkit {preset}", args.peak_tflops * 1e12))
        except torch.OutOfMemoryError as err:  # report the size that does not fit, go on
            notes.append(f"{preset} batch {args.batch}: out of memory ({str(err).splitlines()[0]})")
            del model
            torch.cuda.empty_cache()
            continue
        if have_ref and preset in args.reference_presets.split(","):
            from avgkit_mamba.reference import reference_backbone

            ref = ARModel(reference_backbone(model.backbone, mem_eff_path=False), model.conditioner)
            rows.append(run(ref, args.batch, steps, f"mamba-ssm unfused {preset}", args.peak_tflops * 1e12))
            rows[-2]["speedup_vs_reference"] = round(rows[-2]["tokens_per_s"] / rows[-1]["tokens_per_s"], 2)
            del ref
        del model
        torch.cuda.empty_cache()
    if not have_ref:
        notes.append("mamba-ssm not importable: no reference rows")
    write_result("train_step_quick" if args.quick else "train_step", {"rows": rows, "notes": notes}, args.out)


if __name__ == "__main__":
    main()
