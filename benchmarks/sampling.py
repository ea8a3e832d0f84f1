"""Sampling speed: AiM and avgkit's transformer against LlamaGen's own compiled sampler, one process.

Every row does the same work: random weights in bf16 (output heads drawn, not zero, so
the logits are not all ties), 256 image tokens, CFG 2.0 (twice the sequences),
temperature 1, and the same filters (none by default; ``--filters paper`` for top-k
600 + top-p 0.98). The rows of one comparison are timed interleaved (one call of each
in turn, repeated), and each row reports the median and the spread of its repeats, the
first call (compilation, autotuning, graph capture) apart.

Transformer baseline: LlamaGen's sampler (``autoregressive/models/generate.py``) with its
GPT compiled as its ``sample_c2i.py`` does (``torch.compile(mode="reduce-overhead",
fullgraph=True)``), from a checkout of the public LlamaGen code that ``--llamagen-root``
points at (commit ce98ec4 was measured). avgkit's transformer runs through avgkit's
sampler with ``compile`` on: inductor kernels and its decoding-attention kernel replayed
from the step's CUDA graph (``--gpt-attention`` adds rows with another ``decode_attention``).
AiM rows also report the memory floor of their state layout (weights read once per step
plus the state read and written, at the copy bandwidth measured in the same run). AiM-B's
decoding variants (bf16 or int8 state; with ``--chunked`` the chunked form too) are timed
interleaved at each ``--variants`` batch size (``--step-tiles``: each also with the
fastest state-update work split of a ``gpu_check.py --tiles`` report; ``--step-splits``:
with the splits named), and ``--profile``
records a per-kernel profile of one step for each of them (before: bf16 two-launch).

    python benchmarks/sampling.py [--quick] [--llamagen-root DIR] [--filters none|paper] [--out FILE]
    python benchmarks/sampling.py --smoke        # the same code path on the CPU, tiny models
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from common import (  # noqa: E402
    allocated_gib,
    build_sampling_aim,
    copy_bandwidth,
    import_mamba_ssm,
    peak_memory_gib,
    reset_peak_memory,
    state_label,
    timed_on,
    write_result,
)

from avgkit.plugins import get_registry  # noqa: E402
from avgkit.sample.ar import ARSampler, ARSamplerConfig  # noqa: E402

VOCAB, TOKENS, CLASSES = 16384, 256, 1000
LLAMAGEN = {"gpt-b": "GPT-B", "gpt-l": "GPT-L", "gpt-xl": "GPT-XL"}
FILTERS = {"none": {"top_k": 0, "top_p": 1.0}, "paper": {"top_k": 600, "top_p": 0.98}}
#: --smoke: tiny shapes on the CPU (the whole harness, no GPU)
SMOKE = {"vocab": 64, "tokens": 16, "classes": 10, "aim": "tiny", "gpt": "tiny"}


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_aim(preset: str, *, tokens: int = TOKENS, state_dtype: str = "auto", impl: str = "auto",
              decode_form: str | None = None, device: str = "cuda", vocab: int = VOCAB, classes: int = CLASSES,
              step_kernel: str | None = None):
    """(backbone, conditioner) of an AiM preset, random weights, bf16 (see ``common.build_sampling_aim``)."""
    return build_sampling_aim(preset, device=device, vocab=vocab, tokens=tokens, classes=classes,
                              state_dtype=state_dtype, impl=impl, decode_form=decode_form, step_kernel=step_kernel)


def build_gpt(preset: str, *, tokens: int = TOKENS, device: str = "cuda", vocab: int = VOCAB,
              classes: int = CLASSES, **options: Any):
    reg = get_registry()
    name = next((n for n in ("llamagen-gpt", "gpt", "transformer") if n in reg.names("backbone")), None)
    if name is None:
        return None, None
    spec = reg.get("backbone", name)
    torch.manual_seed(0)
    backbone = spec.factory(spec.resolve(preset, {"vocab_size": vocab, "num_tokens": tokens, **options}))
    with torch.no_grad():  # LlamaGen zero-initialises the head: every logit would tie
        nn.init.normal_(backbone.head.weight, std=0.02)
    cspec = reg.get("conditioner", "class-token")
    cond = cspec.factory(cspec.resolve(None, {"num_classes": classes}), dim=backbone.dim, num_layers=backbone.num_layers)
    return backbone.to(device).bfloat16().eval(), cond.to(device).bfloat16().eval()


def llamagen_sampler(root: str, preset: str, batch: int, *, cfg_scale: float, top_k: int, top_p: float,
                     device: str = "cuda", tokens: int = TOKENS, vocab: int = VOCAB, classes: int = CLASSES,
                     compile: bool = True, model_args: dict | None = None) -> tuple[Callable[[], Any], int]:
    """LlamaGen's own sampling call, set up as its ``sample_c2i.py`` does; returns (call, parameters)."""
    if root not in sys.path:
        sys.path.insert(0, root)
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import GPT_models, ModelArgs, Transformer

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, block_size=tokens, num_classes=classes, cls_token_num=1, model_type="c2i")
    if model_args:  # tiny shapes for the CPU smoke run
        model = Transformer(ModelArgs(**model_args, **common))
    else:
        model = GPT_models[LLAMAGEN[preset]](**common)
    with torch.no_grad():
        nn.init.normal_(model.output.weight, std=0.02)  # same non-tied logits as avgkit's row
    model = model.to(device=device, dtype=torch.bfloat16).eval()
    n_params = _params(model)
    run_model = torch.compile(model, mode="reduce-overhead", fullgraph=True) if compile else model
    labels = torch.arange(batch, device=device) % classes

    def call() -> Any:
        with torch.no_grad():
            return generate(run_model, labels, tokens, cfg_scale=cfg_scale, cfg_interval=-1, temperature=1.0,
                            top_k=top_k, top_p=top_p, sample_logits=True)

    return call, n_params


def avgkit_sampler(backbone, cond, batch: int, cfg: ARSamplerConfig, device: str = "cuda",
                   seed: int = 1) -> Callable[[], Any]:
    sampler = ARSampler(cfg)
    if device == "cpu":  # the smoke run: trace and functionalize the step, skip inductor's C++ build
        sampler.compile_backend = "aot_eager"
    labels = torch.arange(batch, device=device) % cond.num_classes
    return lambda: sampler.sample(backbone, cond, labels, seed=seed)


def _time_once(fn: Callable[[], Any], device: str) -> float:
    return timed_on(device, fn, repeats=1)[0]


PARTIAL: list = []


def interleaved(entries: list[dict], repeats: int, device: str, bandwidth: float | None = None) -> list[dict]:
    """Time each entry's ``call`` once per round, rounds repeated; first calls timed apart.

    ``entries``: dicts with ``name``, ``call``, ``batch``, ``tokens`` and optional
    ``params``, ``backbone`` (for the AiM memory floor), ``cfg`` (doubling) and extras.
    """
    firsts = {}
    for e in entries:
        # the peak counts what the process already holds (the other entries' models, states and graphs):
        # held_before_gib says how much of it that was
        e["held_before_gib"] = allocated_gib(device)
        reset_peak_memory(device)
        firsts[e["name"]] = _time_once(e["call"], device)
        e["peak_mem_gib"] = peak_memory_gib(device)
    times: dict[str, list[float]] = {e["name"]: [] for e in entries}
    for _ in range(repeats):
        for e in entries:
            times[e["name"]].append(_time_once(e["call"], device))
    rows = []
    for e in entries:
        ts = times[e["name"]]
        med = statistics.median(ts)
        row = {"model": e["name"], "batch": e["batch"], "tokens": e["tokens"], "params": e.get("params"),
               "first_call_s": round(firsts[e["name"]], 3), "median_s": round(med, 4),
               "spread_s": [round(min(ts), 4), round(max(ts), 4)], "repeats": len(ts),
               "images_per_s": round(e["batch"] / med, 1), "step_ms": round(1e3 * med / e["tokens"], 3),
               "peak_mem_gib": e.get("peak_mem_gib"), "held_before_gib": e.get("held_before_gib"),
               **e.get("extra", {})}
        bb = e.get("backbone")
        if bandwidth is not None and bb is not None:
            nbytes = floor_bytes(bb, 2 * e["batch"] if e.get("cfg", True) else e["batch"])
            floor_s = e["tokens"] * nbytes / bandwidth
            row.update(floor_images_per_s=round(e["batch"] / floor_s, 1), fraction_of_floor=round(floor_s / med, 3),
                       bytes_per_step=nbytes)
        print(json.dumps(row), flush=True)
        rows.append(row)
        PARTIAL.append(row)
        out = os.environ.get("OUT")
        if out:  # keep what was measured even if the run is cut short
            with open(os.path.join(out, "sampling_partial.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def floor_bytes(backbone, batch2: int) -> int:
    """Bytes one decoding step must move: weights once + the decoding state read and written.

    Dual form: the conv window read and written, and on average half of the token caches
    read. Chunked form: as the dual form over its window, plus the SSM state (and scales)
    read every step and written once a window.
    """
    weights = sum(p.numel() * p.element_size() for p in backbone.parameters())
    state = backbone.init_state(batch2)

    def size(t) -> int:
        return t.numel() * t.element_size()

    if getattr(state, "length", None) is not None:
        caches = sum(2 * size(s.conv) + (size(s.x) + size(s.b) + size(s.dt) + size(s.cum)) // 2
                     for s in state.layers)
        if not hasattr(state.layers[0], "ssm"):  # dual
            return weights + caches
        window = state.layers[0].x.shape[1]
        ssm = sum(size(s.ssm) + (0 if s.scale is None else size(s.scale)) for s in state.layers)
        return weights + caches + ssm + ssm // window
    # conv window, SSM state and (one-byte state) its row scales, each read and written
    return weights + 2 * sum(size(s.conv) + size(s.ssm) + (0 if s.scale is None else size(s.scale))
                             for s in state.layers)


def kernel_profile(backbone, cond, batch, sampler_cfg, top: int = 40) -> list[dict]:
    """GPU time per decoding step by kernel (CUPTI sees kernels inside graph replays), with the launches a step."""
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
    launches = sum(e.count for e in events) / steps
    out = [{"kernel": e.key[:90], "ms_per_step": round(e.device_time_total / 1e3 / steps, 4),
            "calls_per_step": round(e.count / steps, 2)} for e in events[:top]]
    print(f"profile: {total:.3f} ms GPU time per step, {launches:.1f} launches", flush=True)
    for row in out:
        print("  ", row, flush=True)
    try:
        spans = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
                 if e.device_type.name == "CUDA" and e.time_range.end > e.time_range.start]
        idle = idle_gaps(spans, steps)
    except (AttributeError, TypeError, ValueError) as err:  # the profile above still counts
        idle = {"error": f"{type(err).__name__}: {err}"}
        print(f"idle: not counted ({idle['error']})", flush=True)
    else:
        print(f"idle: {idle['idle_ms_per_step']:.3f} ms a step between {len(spans)} kernel spans; the largest by "
              "the pair of kernels:", flush=True)
        for row in idle["by_pair"][:12]:
            print("  ", row, flush=True)
    return [{"kernel": "(all kernels)", "ms_per_step": round(total, 4), "calls_per_step": round(launches, 2),
             "idle": idle}] + out


def idle_gaps(spans: list[tuple[str, float, float]], steps: int, top: int = 20) -> dict:
    """The GPU's idle time between consecutive kernels (name, start us, end us), a step: in all, and by the pair of
    kernels it falls between, largest first (idle beyond 200 us, where the host waited, is left out)."""
    spans = sorted(spans, key=lambda s: s[1])
    pairs: dict[tuple[str, str], list[float]] = {}
    last_end, last_name, idle = None, None, 0.0
    for name, start, end in spans:
        if last_end is not None and 0 < start - last_end < 200:
            idle += start - last_end
            pairs.setdefault((last_name[:40], name[:40]), []).append(start - last_end)
        if last_end is None or end > last_end:
            last_end, last_name = end, name
    rows = [{"after": a, "before": b, "ms_per_step": round(sum(g) / 1e3 / steps, 4),
             "calls_per_step": round(len(g) / steps, 2), "mean_us": round(sum(g) / len(g), 2)}
            for (a, b), g in pairs.items()]
    rows.sort(key=lambda r: -r["ms_per_step"])
    return {"idle_ms_per_step": round(idle / 1e3 / steps, 4), "by_pair": rows[:top]}


def transformer_comparison(preset: str, batches: list[int], cfg: ARSamplerConfig, repeats: int, root: str | None,
                           device: str, notes: list, shape: dict, attentions: tuple[str, ...] = ("auto",)) -> list[dict]:
    """avgkit's transformer (compiled step in the sampler's graph, each decode attention) vs LlamaGen's compiled sampler."""
    rows = []
    for batch in batches:
        torch._dynamo.reset()  # each batch size compiles afresh, as in a new process
        entries = []
        for attention in attentions:
            gpt, gcond = build_gpt(shape.get("gpt", preset), tokens=shape["tokens"], device=device,
                                   vocab=shape["vocab"], classes=shape["classes"], decode_attention=attention)
            if gpt is None:
                notes.append("no transformer backbone plugin installed")
                return rows
            label = "" if attention == "auto" else f" ({attention} attention)"
            entries.append({"name": f"avgkit {preset} compiled{label}", "batch": batch, "tokens": shape["tokens"],
                            "params": _params(gpt) + _params(gcond),
                            "call": avgkit_sampler(gpt, gcond, batch, cfg.model_copy(update={"compile": True}), device)})
        if root:
            try:
                call, n = llamagen_sampler(root, preset, batch, cfg_scale=cfg.cfg_scale, top_k=cfg.top_k,
                                           top_p=cfg.top_p, device=device, tokens=shape["tokens"],
                                           vocab=shape["vocab"], classes=shape["classes"],
                                           compile=device == "cuda", model_args=shape.get("llamagen_args"))
                entries.append({"name": f"LlamaGen {LLAMAGEN.get(preset, preset)} compiled", "batch": batch,
                                "tokens": shape["tokens"], "params": n, "call": call})
                if n != entries[0]["params"]:
                    notes.append(f"not equal work: LlamaGen {preset} has {n:,} parameters, avgkit's "
                                 f"{entries[0]['params']:,}")
            except Exception as err:  # report, don't hide
                notes.append(f"LlamaGen {preset} failed: {type(err).__name__}: {str(err)[:300]}")
        elif batch == batches[0]:
            notes.append("no --llamagen-root: LlamaGen's compiled sampler not measured")
        rows += interleaved(entries, repeats, device)
        del entries
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


#: decoding variants timed interleaved against the bf16 two-launch baseline: (state dtype, step kernel, form).
#: The one-launch kernel, measured slower on H100s (docs/backbone-mamba.md), is left out; ``--chunked`` adds the
#: chunked form's rows.
STEP_VARIANTS = (("bf16", "two-launch", "recurrent"), ("int8", "two-launch", "recurrent"))
CHUNKED_VARIANTS = (("bf16", "two-launch", "chunked"), ("int8", "two-launch", "chunked"))
#: ``--fused-in-proj``: the conv, dt and decay in in_proj's epilogue instead of a launch of their own, always or
#: by the rule (``auto``: at 32 rows or fewer)
FUSED_IN_PROJ_VARIANTS = (("bf16", "fused-in-proj", "recurrent"), ("int8", "fused-in-proj", "recurrent"),
                          ("int8", "auto", "recurrent"))


def swept_tile_rule(path: str) -> Callable[..., Any]:
    """The state-update kernel's work split from a ``gpu_check.py --tiles`` report: for each state kind (bf16,
    int8) the fastest split measured at the nearest number of (sequence, head) rows."""
    from avgkit_mamba.ops.triton_step import StepTile

    best: dict[tuple[str, int], tuple[float, Any]] = {}
    for r in json.loads(Path(path).read_text())["decode_kernel_timing"]:
        key = (r["state"], r["batch"] * r["nheads"])
        if key not in best or r["ms"] < best[key][0]:
            best[key] = (r["ms"], StepTile(r["block_p"], r["num_warps"], r["heads"], r["stream"], r.get("stages", 1),
                                            r.get("preconv", False)))

    def rule(rows: int, p: int, quant: bool = False) -> Any:
        kind = "int8" if quant else "bf16"
        near = min((k for k in best if k[0] == kind), key=lambda k: abs(k[1] - rows))
        return best[near][1]

    return rule


def _within(call: Callable[[], Any], context: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` run inside a fresh ``context()`` each time (a CUDA graph captured on the first call keeps what the
    context set: ``triton_step.split_rule``'s split, ``triton_launch.programmatic_launch``)."""

    def run() -> Any:
        with context():
            return call()

    return run


def fixed_split_rule(spec: str) -> tuple[str, Callable[..., Any]]:
    """``32x8``, ``64x8:stream``, ``32x8:h4:s2``, ``32x8:pc`` (head dims x warps, then streaming, heads a program,
    the pipeline depth of the loop over them and the conv in its own launch) as a (label, rule) pair that gives
    that split at every size."""
    from avgkit_mamba.ops.triton_step import StepTile

    try:
        tile = StepTile.parse(spec)
    except ValueError as err:
        raise SystemExit(f"--step-splits: {err}") from None
    return f"split {spec.strip()}", lambda rows, p, quant=False: tile


def step_variants(preset: str, batches: list[int], cfg: ARSamplerConfig, repeats: int, device: str,
                  bw: float | None, shape: dict, variants: tuple = STEP_VARIANTS,
                  tile_rules: tuple = (), split_forms: tuple = ("recurrent", "chunked"), pdl: bool = False
                  ) -> list[dict]:
    """The decoding state and step kernel compared in one process, interleaved per batch size.

    Each row reports its fraction of the floor of its own state layout (int8: half the
    state bytes of bf16, plus the row scales). Each (label, rule) of ``tile_rules``
    (``swept_tile_rule``, ``fixed_split_rule``) adds a row per two-launch variant with the state
    update split by that rule, for the decode forms in ``split_forms`` (the chunked form's kernel takes the
    split's head dims, warps and register cap). With ``pdl`` each two-launch variant also runs with its decode
    kernels launched by programmatic dependent launch.
    """
    rows = []
    for b in batches:
        entries = []
        for state_dtype, kernel, form in variants:
            bb, cond = build_aim(shape.get("aim", preset), tokens=shape["tokens"], device=device,
                                 vocab=shape["vocab"], classes=shape["classes"], state_dtype=state_dtype,
                                 step_kernel=kernel, decode_form=form)
            label = kernel if form == "recurrent" else form
            extra = {"state_dtype": state_dtype, "step_kernel": kernel, "decode_form": form}
            base = {"name": f"avgkit {preset} {state_dtype}-state {label}", "batch": b, "tokens": shape["tokens"],
                    "params": _params(bb) + _params(cond), "backbone": bb, "cfg": cfg.cfg_scale != 1,
                    "call": avgkit_sampler(bb, cond, b, cfg, device), "extra": extra}
            entries.append(base)
            if kernel != "two-launch":
                continue
            if pdl:
                from avgkit_mamba.ops.triton_launch import programmatic_launch

                entries.append({**base, "name": f"{base['name']} pdl", "extra": {**extra, "pdl": True},
                                "call": _within(avgkit_sampler(bb, cond, b, cfg, device),
                                                lambda: programmatic_launch(True))})
            if form not in split_forms:
                continue
            for tag, rule in tile_rules:
                from avgkit_mamba.ops.triton_step import split_rule

                tile = rule(2 * b * bb.layers[0].mixer.nheads, bb.layers[0].mixer.headdim, state_dtype == "int8")
                entries.append({**base, "name": f"{base['name']} {tag}",
                                "call": _within(avgkit_sampler(bb, cond, b, cfg, device),
                                                lambda rule=rule: split_rule(rule)),
                                "extra": {**extra, "step_tile": tile._asdict()}})
        rows += interleaved(entries, repeats, device, bw)
        del entries
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def aim_rows(preset: str, batches: list[int], cfg: ARSamplerConfig, repeats: int, device: str, bw: float | None,
             shape: dict, state_dtype: str = "auto", tag: str = "", compiled: bool = False,
             torch_draw: bool = False, prefill_scan: bool = False) -> list[dict]:
    """AiM rows per batch, named by the state dtype they decode with (``auto``: the recipe's default); with
    ``compiled``, the step through torch.compile beside it, with ``torch_draw`` the draw by PyTorch ops
    (``draw_impl: torch``) beside it, with ``prefill_scan`` the class token through the scan's forward
    (``backbone.PREFILL_BY_STEP`` off) beside it, timed interleaved."""
    bb, cond = build_aim(shape.get("aim", preset), tokens=shape["tokens"], device=device, vocab=shape["vocab"],
                         classes=shape["classes"], state_dtype=state_dtype)
    state_dtype = state_label(bb)
    variants = ([("", cfg)] + ([(" compiled", cfg.model_copy(update={"compile": True}))] if compiled else [])
                + ([(" torch draw", cfg.model_copy(update={"draw_impl": "torch"}))] if torch_draw else []))
    rows = []
    for b in batches:  # one batch at a time: each its own graph and first call
        entries = [{"name": f"avgkit {preset} {state_dtype}-state{tag}{label}", "batch": b,
                    "tokens": shape["tokens"], "params": _params(bb) + _params(cond), "backbone": bb,
                    "cfg": cfg.cfg_scale != 1, "call": avgkit_sampler(bb, cond, b, c, device)}
                   for label, c in variants]
        if prefill_scan:
            from unittest import mock

            from avgkit_mamba import backbone as mamba_backbone

            entries.append({**entries[0], "name": f"{entries[0]['name']} prefill scan",
                            "call": _within(avgkit_sampler(bb, cond, b, cfg, device),
                                            lambda: mock.patch.object(mamba_backbone, "PREFILL_BY_STEP", False))})
        rows += interleaved(entries, repeats, device, bw)
    return rows


def _presets(arg: str | None, default: list[str]) -> list[str]:
    """Comma-separated preset names; ``none`` for no rows of that kind."""
    return default if arg is None else [p for p in arg.split(",") if p and p != "none"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 64 only: AiM-B, GPT-B against LlamaGen's GPT-B")
    ap.add_argument("--llamagen-root", default=os.environ.get("LLAMAGEN_ROOT"),
                    help="a checkout of LlamaGen's public code (its autoregressive/ and utils/ folders)")
    ap.add_argument("--filters", choices=sorted(FILTERS), default="none",
                    help="none, or the reference README's top-k 600 + top-p 0.98")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per row (median and spread)")
    ap.add_argument("--transformers", default=None, help="comma-separated transformer presets (default by mode)")
    ap.add_argument("--aim", default=None, help="comma-separated AiM presets (default by mode)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default by mode)")
    ap.add_argument("--aim-compile", action="store_true",
                    help="each AiM row also with its step through torch.compile, timed interleaved")
    ap.add_argument("--chunked", action="store_true", help="also the chunked form's variant rows")
    ap.add_argument("--torch-draw", action="store_true",
                    help="each AiM row also with the draw by PyTorch ops (draw_impl: torch), timed interleaved")
    ap.add_argument("--prefill-scan", action="store_true",
                    help="each AiM row also with its class token through the scan's forward instead of one decode "
                         "step (backbone.PREFILL_BY_STEP off), timed interleaved")
    ap.add_argument("--fused-in-proj", action="store_true",
                    help="also the variant rows with step_kernel fused-in-proj (the conv in in_proj's epilogue) and auto "
                         "(fused-in-proj at 32 rows or fewer)")
    ap.add_argument("--profile", action="store_true",
                    help="a per-kernel profile of one step at each batch size, with the idle time between kernels: "
                         "the compiled GPT-B, AiM-B's default and each variant (state dtype, step kernel, the "
                         "--step-tiles split)")
    ap.add_argument("--gpt-attention", default="auto",
                    help="comma-separated decode attentions of avgkit's transformer rows (auto, triton, math, sdpa)")
    ap.add_argument("--variants", default=None,
                    help="comma-separated batch sizes at which AiM-B's state dtypes and step kernels are compared "
                         "interleaved (default: 16,64; --quick: 64; none to skip)")
    ap.add_argument("--step-tiles", default=None, metavar="JSON",
                    help="a gpu_check.py --tiles report: the variant rows also run with its fastest work splits")
    ap.add_argument("--step-splits", default="", metavar="SPLITS",
                    help="comma-separated state-update splits the variant rows also run with, each at every size: "
                         "BLOCK_PxWARPS[:stream][:hN][:sN][:pc] (sN: the loop over heads pipelined N deep; pc: the conv "
                         "in its own launch), "
                         "e.g. 32x8,32x8:h4:s2")
    ap.add_argument("--pdl", action="store_true",
                    help="each two-launch variant also with its decode kernels launched by programmatic dependent "
                         "launch (triton_launch.programmatic_launch), timed interleaved")
    ap.add_argument("--split-forms", default="recurrent,chunked",
                    help="comma-separated decode forms the --step-tiles / --step-splits rows are for")
    ap.add_argument("--smoke", action="store_true", help="the harness on the CPU with tiny models")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cfg = ARSamplerConfig(cfg_scale=2.0, **FILTERS[args.filters])
    device = "cpu" if args.smoke else "cuda"
    shape = dict(SMOKE) if args.smoke else {"vocab": VOCAB, "tokens": TOKENS, "classes": CLASSES}
    if args.smoke:
        shape["llamagen_args"] = {"dim": 64, "n_layer": 2, "n_head": 4, "multiple_of": 32}
    bw = None if args.smoke else copy_bandwidth()
    if bw:
        print(f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write)", flush=True)
    repeats = 2 if args.smoke else max(5, args.repeats)
    batches = ([int(b) for b in args.batches.split(",")] if args.batches
               else [2] if args.smoke else [64] if args.quick else [16, 64, 256])
    small = args.quick or args.smoke
    gpts = _presets(args.transformers, ["gpt-b"] if small else ["gpt-b", "gpt-l"])
    aims = _presets(args.aim, ["aim-b"] if small else ["aim-b", "aim-l", "aim-xl"])
    rows: list[dict] = []
    notes: list[str] = []
    profiles = {}
    for preset in gpts:
        rows += transformer_comparison(preset, batches, cfg, repeats, args.llamagen_root, device, notes, shape,
                                       tuple(args.gpt_attention.split(",")))
    if args.profile and not args.smoke:  # the baseline's kernels beside AiM-B's (below)
        for preset in gpts:
            gpt, gcond = build_gpt(preset)
            for pb in batches:
                torch._dynamo.reset()
                profiles[f"{preset} b{pb} compiled"] = kernel_profile(gpt, gcond, pb,
                                                                      cfg.model_copy(update={"compile": True}))
            del gpt, gcond
    split_forms = tuple(f.strip() for f in args.split_forms.split(","))
    tile_rules = (([("swept split", swept_tile_rule(args.step_tiles))] if args.step_tiles else [])
                  + [fixed_split_rule(v) for v in args.step_splits.split(",") if v.strip()])
    for preset in aims:
        rows += aim_rows(preset, batches, cfg, repeats, device, bw, shape, compiled=args.aim_compile,
                         torch_draw=args.torch_draw, prefill_scan=args.prefill_scan)
        if preset == "aim-b" and not args.quick and not args.smoke:
            rows += aim_rows(preset, [64], cfg, repeats, device, bw, shape, state_dtype="fp32")
            if import_mamba_ssm() is not None:
                from avgkit_mamba.reference import reference_backbone

                bb, cond = build_aim(preset)
                ref = reference_backbone(bb)
                rows += interleaved([{"name": f"mamba-ssm {preset} stack, graph", "batch": 64, "tokens": TOKENS,
                                      "params": _params(ref) + _params(cond), "backbone": ref,
                                      "call": avgkit_sampler(ref, cond, 64, cfg)}], repeats, device, bw)
                del bb, cond, ref
            else:
                notes.append("mamba-ssm not importable: reference stack not measured")
        variants = (STEP_VARIANTS + (CHUNKED_VARIANTS if args.chunked else ())
                    + (FUSED_IN_PROJ_VARIANTS if args.fused_in_proj else ()))
        if preset == "aim-b" and args.variants != "none":
            vb = ([int(b) for b in args.variants.split(",")] if args.variants else batches[:1] if args.smoke
                  else [64] if args.quick else [16, 64])
            rows += step_variants(preset, vb, cfg, repeats, device, bw, shape, variants, tile_rules, split_forms,
                                  args.pdl)
        if preset == "aim-b" and args.profile and not args.smoke:
            from avgkit_mamba.ops.triton_step import split_rule

            bb, cond = build_aim(preset)  # the recipe's default, then the variants (none with --variants none)
            for pb in batches:
                profiles[f"aim-b b{pb} default"] = kernel_profile(bb, cond, pb, cfg)
            del bb, cond
            for state_dtype, kernel, form in (variants if args.variants != "none" else ()):
                bb, cond = build_aim(preset, state_dtype=state_dtype, step_kernel=kernel, decode_form=form)
                splits = [("", None)] + (list(tile_rules) if kernel == "two-launch" and form in split_forms else [])
                for (tag, r), pb in itertools.product(splits, batches):
                    with split_rule(r):
                        profiles[f"aim-b b{pb} {state_dtype}-state {kernel} {form}{' ' + tag if tag else ''}"] = \
                            kernel_profile(bb, cond, pb, cfg)
                del bb, cond
        if device == "cuda":
            torch.cuda.empty_cache()
    name = "sampling_smoke" if args.smoke else "sampling_quick" if args.quick else "sampling"
    write_result(name, {"settings": cfg.model_dump(), "filters": args.filters, "copy_bandwidth_Bps": bw,
                        "llamagen_root": args.llamagen_root, "rows": rows, "kernel_profiles": profiles,
                        "notes": notes}, args.out)
    print("\n{:<46} {:>6} {:>10} {:>12} {:>9}".format("row", "batch", "images/s", "spread s", "first s"))
    for r in rows:
        print("{:<46} {:>6} {:>10} {:>12} {:>9}".format(r["model"][:46], r["batch"], r["images_per_s"],
                                                        "{}-{}".format(*r["spread_s"]), r["first_call_s"]))


if __name__ == "__main__":
    main()
