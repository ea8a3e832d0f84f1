"""Sampling speed: AiM (avgkit kernels, CUDA graph) vs the mamba-ssm stack vs a GPT, one run.

Every row uses the same sampler settings (bf16 weights, 256 image tokens, CFG 2.0 so
twice the sequences, temperature 1, no top-k/top-p unless --topk) and random weights.
For AiM each row also reports the memory floor of its state layout: weights read once
per step plus the decoding state read and written, at the copy bandwidth measured in the
same run.

    python benchmarks/sampling.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import copy_bandwidth, import_mamba_ssm, timed, write_result  # noqa: E402

from avgkit.plugins import get_registry  # noqa: E402
from avgkit.sample.ar import ARSampler, ARSamplerConfig  # noqa: E402

VOCAB, TOKENS, CLASSES = 16384, 256, 1000
AIM = {"aim-b": ("adaln", {}), "aim-l": ("adaln-group", {"groups": 4}), "aim-xl": ("adaln-group", {"groups": 4})}


def build_aim(preset: str, *, tokens: int = TOKENS, state_dtype: str = "bf16", impl: str = "auto",
              decode_form: str = "recurrent"):
    reg = get_registry()
    spec = reg.get("backbone", "mamba2")
    cfg = spec.resolve(preset, {"vocab_size": VOCAB, "num_tokens": tokens, "state_dtype": state_dtype, "impl": impl,
                                "decode_form": decode_form})
    torch.manual_seed(0)
    backbone = spec.factory(cfg)
    cname, opts = AIM[preset]
    cspec = reg.get("conditioner", cname)
    cond = cspec.factory(cspec.resolve(None, {"num_classes": CLASSES, **opts}), dim=backbone.dim,
                         num_layers=backbone.num_layers)
    # non-zero adaLN so modulation is exercised like a trained model
    with torch.no_grad():
        for p in cond.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.02)
    return backbone.cuda().bfloat16().eval(), cond.cuda().bfloat16().eval()


def build_gpt(preset: str, *, tokens: int = TOKENS):
    reg = get_registry()
    name = next((n for n in ("llamagen-gpt", "gpt", "transformer") if n in reg.names("backbone")), None)
    if name is None:
        return None, None
    spec = reg.get("backbone", name)
    torch.manual_seed(0)
    backbone = spec.factory(spec.resolve(preset, {"vocab_size": VOCAB, "num_tokens": tokens}))
    cspec = reg.get("conditioner", "class-token")
    cond = cspec.factory(cspec.resolve(None, {"num_classes": CLASSES}), dim=backbone.dim, num_layers=backbone.num_layers)
    return backbone.cuda().bfloat16().eval(), cond.cuda().bfloat16().eval()


def floor_bytes(backbone, batch2: int) -> int:
    """Bytes one decoding step must move: weights once + the decoding state read and written.

    Dual form: the conv window read and written, and on average half of the token caches read.
    """
    weights = sum(p.numel() * p.element_size() for p in backbone.parameters())
    state = backbone.init_state(batch2)

    def size(t) -> int:
        return t.numel() * t.element_size()

    if getattr(state, "length", None) is not None:
        return weights + sum(2 * size(s.conv) + (size(s.x) + size(s.b) + size(s.dt) + size(s.cum)) // 2
                             for s in state.layers)
    return weights + 2 * sum(size(s.conv) + size(s.ssm) for s in state.layers)


PARTIAL: list = []


def measure(name, backbone, cond, batch, sampler_cfg, bandwidth=None, repeats=3):
    sampler = ARSampler(sampler_cfg)
    labels = torch.arange(batch, device="cuda") % CLASSES
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    sampler.sample(backbone, cond, labels, seed=0)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    med, times = timed(lambda: sampler.sample(backbone, cond, labels, seed=1), repeats)
    row = {
        "model": name, "batch": batch, "first_call_s": round(first, 3), "median_s": round(med, 4),
        "images_per_s": round(batch / med, 1), "times_s": [round(t, 4) for t in times],
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "step_ms": round(1e3 * med / backbone.num_tokens, 3),
    }
    if bandwidth is not None and hasattr(backbone, "layers") and hasattr(backbone, "init_state"):
        try:
            nbytes = floor_bytes(backbone, 2 * batch if sampler_cfg.cfg_scale != 1 else batch)
            floor_s = backbone.num_tokens * nbytes / bandwidth
            row.update(floor_images_per_s=round(batch / floor_s, 1), fraction_of_floor=round(floor_s / med, 3),
                       bytes_per_step=nbytes)
        except AttributeError:
            pass
    print(row, flush=True)
    PARTIAL.append(row)
    out = os.environ.get("OUT")
    if out:  # keep what was measured even if the run is cut short
        with open(os.path.join(out, "sampling_partial.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def kernel_profile(backbone, cond, batch, sampler_cfg, top: int = 12) -> list[dict]:
    """GPU time per decoding step by kernel (CUPTI sees kernels inside graph replays)."""
    from torch.profiler import ProfilerActivity, profile

    sampler = ARSampler(sampler_cfg)
    labels = torch.arange(batch, device="cuda") % CLASSES
    sampler.sample(backbone, cond, labels, seed=0)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        sampler.sample(backbone, cond, labels, seed=1)
        torch.cuda.synchronize()
    steps = backbone.num_tokens
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or getattr(e, "device_time_total", 0)]
    events.sort(key=lambda e: -getattr(e, "device_time_total", 0))
    total = sum(getattr(e, "device_time_total", 0) for e in events) / 1e3 / steps
    out = [{"kernel": e.key[:90], "ms_per_step": round(e.device_time_total / 1e3 / steps, 4),
            "calls_per_step": round(e.count / steps, 2)} for e in events[:top]]
    print(f"profile: {total:.3f} ms GPU time per step", flush=True)
    for row in out:
        print("  ", row, flush=True)
    return [{"kernel": "(all kernels)", "ms_per_step": round(total, 4)}] + out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="AiM-B and GPT-B at batch 64 only")
    ap.add_argument("--only-aim-b", action="store_true", help="AiM-B (all batches) and GPT-B only")
    ap.add_argument("--out", default=None)
    ap.add_argument("--topk", action="store_true", help="also the reference README settings (top-k 600, top-p 0.98)")
    args = ap.parse_args()
    cfg = ARSamplerConfig(cfg_scale=2.0)
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write)", flush=True)
    rows, notes = [], []
    presets = ["aim-b"] if args.quick or args.only_aim_b else ["aim-b", "aim-l", "aim-xl"]
    batches = [64] if args.quick else [16, 64, 256]
    profiles = {}
    for preset in presets:
        bb, cond = build_aim(preset)
        for b in batches:
            rows.append(measure(f"avgkit {preset} bf16-state", bb, cond, b, cfg, bw))
            if preset == "aim-b" and b == 64:
                profiles[f"{preset} b{b}"] = kernel_profile(bb, cond, b, cfg)
        if preset == "aim-b":
            dual, dcond = build_aim(preset, decode_form="dual")  # per-token caches instead of the state
            for b in batches:
                rows.append(measure(f"avgkit {preset} dual form", dual, dcond, b, cfg, bw))
            del dual, dcond
            bb32, cond32 = build_aim(preset, state_dtype="fp32")
            rows.append(measure(f"avgkit {preset} fp32-state", bb32, cond32, 64, cfg, bw))
            del bb32, cond32
            rows.append(measure(f"avgkit {preset} eager (no graph)", bb, cond, 64,
                                cfg.model_copy(update={"cuda_graph": False}), bw, repeats=1))
            if args.topk:
                rows.append(measure(f"avgkit {preset} top-k 600 top-p 0.98", bb, cond, 64,
                                    cfg.model_copy(update={"top_k": 600, "top_p": 0.98}), bw))
            if import_mamba_ssm() is not None:
                from avgkit_mamba.reference import reference_backbone

                ref = reference_backbone(bb)
                rows.append(measure(f"mamba-ssm {preset} stack, graph", ref, cond, 64, cfg, bw))
                del ref
            else:
                notes.append("mamba-ssm not importable: reference stack not measured")
        del bb, cond
        torch.cuda.empty_cache()
    for preset in ["gpt-b"] if args.quick or args.only_aim_b else ["gpt-b", "gpt-l"]:
        gpt, gcond = build_gpt(preset)
        if gpt is None:
            notes.append("no GPT backbone plugin installed")
            break
        rows.append(measure(f"{preset} eager kernels, graph", gpt, gcond, 64, cfg))
        if preset == "gpt-b":
            # compiled like LlamaGen's sampler: the step under torch.compile(mode="reduce-overhead"),
            # i.e. inductor kernels replayed from inductor's own CUDA graphs; the sampler's graph is off
            try:
                torch._dynamo.reset()
                eager_step = gpt.step
                gpt.step = torch.compile(eager_step, mode="reduce-overhead", fullgraph=True, dynamic=False)
                rows.append(measure(f"{preset} torch.compile reduce-overhead", gpt, gcond, 64,
                                    cfg.model_copy(update={"cuda_graph": False})))
                from torch._dynamo.utils import counters  # why a compiled step is slow: recompiles, breaks

                rows[-1]["dynamo_counters"] = {k: {str(kk): vv for kk, vv in v.items()} for k, v in counters.items()
                                               if k in ("stats", "recompiles", "graph_break", "inductor")}
                gpt.step = eager_step
            except Exception as err:  # report, don't hide
                notes.append(f"{preset} compile failed: {type(err).__name__}: {str(err)[:300]}")
        del gpt, gcond
        torch.cuda.empty_cache()
    if not args.quick:  # memory as the sequence grows, recurrent path
        for tokens in (256, 576, 1024):
            bb, cond = build_aim("aim-b", tokens=tokens)
            rows.append({**measure(f"avgkit aim-b {tokens} tokens", bb, cond, 16, cfg, bw, repeats=1), "tokens": tokens})
            del bb, cond
            gpt, gcond = build_gpt("gpt-b", tokens=tokens)
            if gpt is not None:
                rows.append({**measure(f"gpt-b {tokens} tokens", gpt, gcond, 16, cfg, repeats=1), "tokens": tokens})
            del gpt, gcond
            torch.cuda.empty_cache()
    write_result("sampling_quick" if args.quick else "sampling", {
        "settings": cfg.model_dump(), "copy_bandwidth_Bps": bw, "rows": rows, "kernel_profiles": profiles,
        "notes": notes,
    }, args.out)


if __name__ == "__main__":
    main()
