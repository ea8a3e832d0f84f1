"""Training throughput: avgkit's AiM (Triton scan) vs the same stack on mamba-ssm's unfused Mamba-2.

Synthetic codes (batch 64 x 256 tokens, vocab 16384, 1000 classes), bf16 autocast,
fused AdamW, gradient clipping, label dropout: the step the trainer runs. Reports
tokens/s after warm-up, peak memory, the first step's time, and MFU on a 6N basis and
on full FLOPs (6N plus the SSD scan) against --peak-tflops.

    python benchmarks/train_step.py [--quick] [--presets aim-b,aim-l] [--steps 20] [--out FILE]
    python benchmarks/train_step.py --smoke --out FILE   # the tiny preset on the CPU, three steps
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from common import (  # noqa: E402
    add_smoke_flag,
    device_for,
    empty_cache,
    import_mamba_ssm,
    peak_memory_gib,
    reset_peak_memory,
    smoke_out,
    synchronize,
    write_result,
)

from avgkit.build import ARModel  # noqa: E402
from avgkit.plugins import get_registry  # noqa: E402

VOCAB, TOKENS, CLASSES = 16384, 256, 1000
CONDITIONER = {"aim-b": ("adaln", {}), "aim-l": ("adaln-group", {"groups": 4}),
               "aim-xl": ("adaln-group", {"groups": 4}), "aim-1b": ("adaln-group", {"groups": 4}),
               "tiny": ("adaln-group", {"groups": 2})}
SMOKE = {"vocab": 64, "tokens": 16, "batch": 2, "steps": 1, "warmup_steps": 1}


def build(preset: str, *, vocab: int = VOCAB, tokens: int = TOKENS, device: torch.device | str = "cuda") -> ARModel:
    reg = get_registry()
    spec = reg.get("backbone", "mamba2")
    torch.manual_seed(0)
    backbone = spec.factory(spec.resolve(preset, {"vocab_size": vocab, "num_tokens": tokens}))
    name, opts = CONDITIONER[preset]
    cspec = reg.get("conditioner", name)
    cond = cspec.factory(cspec.resolve(None, {"num_classes": CLASSES, **opts}), dim=backbone.dim,
                         num_layers=backbone.num_layers)
    return ARModel(backbone, cond).to(device)


def scan_flops_per_token(model: ARModel, tokens: int = TOKENS) -> float:
    """Forward FLOPs of the chunked SSD per token, all layers (intra-chunk + state terms)."""
    c = model.backbone.config  # from the config, so the mamba-ssm stack counts the same
    q, n, p, h = min(c.chunk_size, tokens), c.d_state, c.headdim, c.expand * c.d_model // c.headdim
    return c.n_layer * 2 * (q * n * c.ngroups + q * p * h + 2 * n * p * h)


def run(model: ARModel, batch: int, steps: int, label: str, peak: float, *, vocab: int = VOCAB,
        tokens: int = TOKENS, warmup_steps: int = 3) -> dict:
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in {id(p): p for p in params}.values())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
    gen = torch.Generator(device=device).manual_seed(0)
    codes = torch.randint(0, vocab, (batch, tokens), device=device, generator=gen)
    labels = torch.randint(0, CLASSES, (batch,), device=device, generator=gen)
    reset_peak_memory(device)

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model.backbone(codes, model.conditioner(model.conditioner.drop_labels(labels, gen)))
            loss = F.cross_entropy(logits.float().flatten(0, 1), codes.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    synchronize(device)
    t0 = time.perf_counter()
    step()
    synchronize(device)
    first = time.perf_counter() - t0
    for _ in range(warmup_steps):
        step()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    dt = (time.perf_counter() - t0) / steps
    tok_s = batch * tokens / dt
    flops_6n = 6 * n_params * tok_s
    flops_full = flops_6n + 3 * scan_flops_per_token(model, tokens) * tok_s
    row = {"model": label, "batch": batch, "params": n_params, "step_s": round(dt, 4), "tokens_per_s": round(tok_s),
           "first_step_s": round(first, 2), "peak_mem_gib": peak_memory_gib(device),
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
    add_smoke_flag(ap)
    args = ap.parse_args()
    device = device_for(args.smoke)
    presets = ["tiny"] if args.smoke else ["aim-b"] if args.quick else args.presets.split(",")
    steps = SMOKE["steps"] if args.smoke else 10 if args.quick else args.steps
    batch = SMOKE["batch"] if args.smoke else args.batch
    size = {k: SMOKE[k] for k in ("vocab", "tokens", "warmup_steps")} if args.smoke else {}
    rows, notes = [], []
    have_ref = False
    if args.no_reference:
        pass
    elif import_mamba_ssm() is None:
        notes.append("mamba-ssm not importable: no reference rows")
    elif device.type != "cuda":
        notes.append("CPU run: no reference rows (mamba-ssm's kernels need a GPU)")
    else:
        have_ref = True
    for preset in presets:
        model = build(preset, device=device, **{k: v for k, v in size.items() if k != "warmup_steps"})
        try:
            rows.append(run(model, batch, steps, f"avgkit {preset}", args.peak_tflops * 1e12, **size))
        except torch.OutOfMemoryError as err:  # report the size that does not fit, go on
            notes.append(f"{preset} batch {batch}: out of memory ({str(err).splitlines()[0]})")
            del model
            empty_cache(device)
            continue
        if have_ref and preset in args.reference_presets.split(","):
            from avgkit_mamba.reference import reference_backbone

            ref = ARModel(reference_backbone(model.backbone, mem_eff_path=False), model.conditioner)
            rows.append(run(ref, batch, steps, f"mamba-ssm unfused {preset}", args.peak_tflops * 1e12, **size))
            rows[-2]["speedup_vs_reference"] = round(rows[-2]["tokens_per_s"] / rows[-1]["tokens_per_s"], 2)
            del ref
        del model
        empty_cache(device)
    name = "train_step_quick" if args.quick else "train_step"
    write_result(name, {"rows": rows, "notes": notes}, smoke_out(name, args.out, args.smoke))


if __name__ == "__main__":
    main()
