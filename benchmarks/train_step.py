"""Training throughput: avgkit's AiM against the AiM authors' trainer step and the mamba-ssm stack.

Synthetic codes (batch 64 x 256 tokens, vocab 16384, 1000 classes), bf16 autocast,
fused AdamW, gradient clipping, label dropout: the step the trainer runs. Every row is
timed in the same process:

* ``avgkit <preset> <variant>``: avgkit's model; variants ``plain`` (the full fp32
  logits, as before the chunked loss), ``chunked`` (the output layer and loss by
  chunks, the trainer's default), ``ckpt`` (chunked, every block checkpointed),
  ``ckpt2`` (chunked, every second block checkpointed), ``compile`` (chunked,
  ``torch.compile`` of the model), ``compile-blocks`` (chunked, each block compiled on
  its own: ``train.compile: blocks``, the conv as Triton kernels, opaque to inductor as the scan is),
  ``ckpt2-compile-blocks``, ``compile-blocks-conv1d`` (compiled blocks calling the depthwise
  conv1d kernel, as before the shifts became the default), ``compile-blocks-loss`` (compiled
  blocks and the chunked loss's softmax gradient as one compiled kernel, ``ARModel.compile_loss``),
  ``graph``, ``compile-blocks-graph``, ``compile-blocks-loss-graph`` (the trainer's GPU default: with the conv's
  Triton kernels and each mixer's conv, scan and gated norm as one op), ``compile-blocks-loss-graph-threeops`` (the
  same with the conv, the scan and the norm as three ops, as before the one-op core),
  ``compile-blocks-loss-graph-torchconv`` (three ops with the conv in PyTorch, the shifted form),
  ``compile-blocks-loss-graph-bf16res`` (the default with the residual stream in bf16: ``backbone.residual_in_fp32:
  false``, which ``precision_check.py``'s ``bf16-residual`` path checks), ``compile-blocks-loss-graph-keepnorms``
  (keeping the norms' intermediates for backward: ``backbone.recompute_norms: false``, what the default ``auto``
  does without checkpointed blocks), ``compile-blocks-loss-graph-recompute`` (recomputing them: ``true``),
  ``compile-blocks-loss-graph-knobs`` (the default with the kernel settings ``--knobs`` names, such as
  ``triton_ssd.DCB_BLOCK=128``), ``compile-blocks-loss-graph-chunk128`` and ``-chunk64`` (the default with the
  scan's chunk at 128 or 64 tokens instead of 256: the same function, other work split) and
  ``ckpt2-compile-blocks-graph`` (the step replayed from one CUDA graph, as ``train.cuda_graph`` does: three eager
  steps, a capture, then replays; labels dropped on the host);
* ``AiM reference <preset>``: the AiM authors' model and the loss of their trainer
  (``Stage2Trainer.compute_loss``), from the checkout ``--aim-root`` points at
  (github.com/hp-l33/AiM; its code is imported from there, never copied); their
  trainer's decay grouping matches no parameter, so no weight decay, as they train;
* ``mamba-ssm stack <preset>``: avgkit's model with mamba-ssm's unfused Mamba-2 mixers
  and the plain loss (kept as it was).

Definitions: tokens/s is the median over ``--windows`` timing windows of
``--window-steps`` steps each after ``--warmup-steps``, with the spread (min, max).
Model FLOPs per token = 6 x the parameters that act on every token (all but the
per-image adaLN projections and tables, the class table and the position table) + 3 x
the SSD scan's forward FLOPs; MFU divides by the bf16 8192^3 matmul rate measured in
the same run (``matmul_tflops``). ``mfu_6n`` (6 x all parameters) is reported beside it.
Every row of a preset is credited the same FLOPs per token (avgkit's count for that
architecture, which the reference rows share). ``host_fraction``: the median over windows
of the time the host took to queue a window's steps over the window's time; near 1 the
step is bound by the host's launches, not the GPU (a step that synchronises inside also
reads near 1).

    python benchmarks/train_step.py [--presets aim-b,aim-l] [--variants plain,chunked,ckpt] [--aim-root DIR]
    python benchmarks/train_step.py --profile benchmarks/results/train_step_profile   # one AiM-B step by kernel
    python benchmarks/train_step.py --smoke --out FILE   # the tiny preset on the CPU (numbers mean nothing)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from avgkit_mamba.ops import conv_torch, dispatch  # noqa: E402
from common import (  # noqa: E402
    add_smoke_flag,
    device_for,
    empty_cache,
    import_mamba_ssm,
    peak_memory_gib,
    reset_peak_memory,
    settings,
    smoke_out,
    synchronize,
    write_result,
)

from avgkit.build import ARModel  # noqa: E402
from avgkit.plugins import get_registry  # noqa: E402
from avgkit.train.regions import compile_blocks  # noqa: E402

VOCAB, TOKENS, CLASSES = 16384, 256, 1000
CONDITIONER = {"aim-b": ("adaln", {}), "aim-l": ("adaln-group", {"groups": 4}),
               "aim-xl": ("adaln-group", {"groups": 4}), "aim-1b": ("adaln-group", {"groups": 4}),
               "tiny": ("adaln-group", {"groups": 2})}
AIM_NAMES = {"aim-b": "AiM-B", "aim-l": "AiM-L", "aim-xl": "AiM-XL"}  # presets the reference code builds
VARIANTS = {"plain": {"fused": False}, "chunked": {"fused": True},
            "ckpt": {"fused": True, "activation_checkpointing": "blocks"},
            "ckpt2": {"fused": True, "activation_checkpointing": "every_n", "checkpoint_every": 2},
            "compile": {"fused": True, "compile": "model"}, "compile-blocks": {"fused": True, "compile": "blocks"},
            "ckpt2-compile-blocks": {"fused": True, "activation_checkpointing": "every_n", "checkpoint_every": 2,
                                     "compile": "blocks"},
            "compile-blocks-conv1d": {"fused": True, "compile": "blocks", "shift_conv": False, "triton_conv": False,
                                      "triton_core": False},
            "compile-blocks-loss": {"fused": True, "compile": "blocks", "compile_loss": True},
            "graph": {"fused": True, "graph": True},
            "compile-blocks-loss-graph": {"fused": True, "compile": "blocks", "compile_loss": True, "graph": True},
            "compile-blocks-loss-graph-threeops": {"fused": True, "compile": "blocks", "compile_loss": True,
                                                   "graph": True, "triton_core": False},
            "compile-blocks-loss-graph-torchconv": {"fused": True, "compile": "blocks", "compile_loss": True,
                                                    "graph": True, "triton_conv": False, "triton_core": False},
            "compile-blocks-loss-graph-bf16res": {"fused": True, "compile": "blocks", "compile_loss": True,
                                                  "graph": True, "residual_in_fp32": False},
            "compile-blocks-loss-graph-keepnorms": {"fused": True, "compile": "blocks", "compile_loss": True,
                                                    "graph": True, "recompute_norms": False},
            "compile-blocks-loss-graph-recompute": {"fused": True, "compile": "blocks", "compile_loss": True,
                                                    "graph": True, "recompute_norms": True},
            "compile-blocks-loss-graph-knobs": {"fused": True, "compile": "blocks", "compile_loss": True,
                                                "graph": True, "knobs": True},
            "compile-blocks-loss-graph-chunk128": {"fused": True, "compile": "blocks", "compile_loss": True,
                                                   "graph": True, "chunk_size": 128},
            "compile-blocks-loss-graph-chunk64": {"fused": True, "compile": "blocks", "compile_loss": True,
                                                  "graph": True, "chunk_size": 64},
            "compile-blocks-graph": {"fused": True, "compile": "blocks", "graph": True},
            "ckpt2-compile-blocks-graph": {"fused": True, "activation_checkpointing": "every_n", "checkpoint_every": 2,
                                           "compile": "blocks", "graph": True}}
SMOKE = {"vocab": 64, "tokens": 16, "batch": 2, "window_steps": 1, "windows": 2, "warmup_steps": 0, "matmul": 256}
MATMUL = 8192


# --------------------------------------------------------------------------- models


def build(preset: str, *, vocab: int = VOCAB, tokens: int = TOKENS, device: torch.device | str = "cuda",
          **options: Any) -> ARModel:
    reg = get_registry()
    spec = reg.get("backbone", "mamba2")
    torch.manual_seed(0)
    backbone = spec.factory(spec.resolve(preset, {"vocab_size": vocab, "num_tokens": tokens, **options}))
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


def token_parameters(model: ARModel) -> tuple[int, int]:
    """(all parameters, those that act on every token): the conditioner and the position table left out."""
    unique = {id(p): p for p in model.parameters()}
    per_image = {id(p) for p in model.conditioner.parameters()}
    pos = model.backbone.embeddings.position_embeddings
    if pos is not None:
        per_image.add(id(pos.weight))
    total = sum(p.numel() for p in unique.values())
    return total, sum(p.numel() for k, p in unique.items() if k not in per_image)


def flops_per_token(model: ARModel, tokens: int) -> dict[str, float]:
    total, per_token = token_parameters(model)
    return {"params": total, "token_params": per_token, "flops_6n": 6.0 * total,
            "flops": 6.0 * per_token + 3 * scan_flops_per_token(model, tokens)}


def matmul_tflops(device: torch.device, n: int = MATMUL, reps: int = 20) -> float:
    """bf16 n^3 matmul rate on ``device`` (TFLOP/s, median of ``reps``)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e12


# --------------------------------------------------------------------------- the AiM authors' code


def _stub_absent(notes: list[str]) -> None:
    """Stand-ins for packages the reference code imports but the timed step never uses.

    ``transformers`` (its Trainer base class, generation output types, hub file names),
    ``torchvision`` (image grids in a callback) and ``huggingface_hub`` (the hub mixin)
    are imported only where absent, and the run's notes say so.
    """
    if getattr(_stub_absent, "done", False):
        return
    _stub_absent.done = True  # type: ignore[attr-defined]

    def absent(name: str) -> bool:
        try:
            importlib.import_module(name)
            return False
        except ImportError:
            return True

    class _Anything:
        def __init__(self, *_: Any, **__: Any) -> None:
            pass

        def __init_subclass__(cls, **_: Any) -> None:
            pass

    stubbed = []
    outputs = ("GreedySearchDecoderOnlyOutput", "SampleDecoderOnlyOutput", "GenerateDecoderOnlyOutput", "TextStreamer")
    if absent("transformers"):
        root, gen, utils, hub = (types.ModuleType(n) for n in ("transformers", "transformers.generation",
                                                              "transformers.utils", "transformers.utils.hub"))
        root.Trainer, root.TrainerCallback, root.TrainingArguments = _Anything, _Anything, _Anything
        utils.WEIGHTS_NAME, utils.CONFIG_NAME = "pytorch_model.bin", "config.json"
        hub.cached_file = lambda *a, **k: None
        root.generation, root.utils, utils.hub = gen, utils, hub
        sys.modules.update({m.__name__: m for m in (root, gen, utils, hub)})
        stubbed.append("transformers")
    gen = importlib.import_module("transformers.generation")
    dropped = [name for name in outputs if not hasattr(gen, name)]
    for name in dropped:  # output types newer releases renamed; only the sampler returns them
        setattr(gen, name, type(name, (_Anything,), {}))
    if dropped and "transformers" not in stubbed:
        stubbed.append(f"transformers.generation.{{{','.join(dropped)}}}")
    if absent("torchvision"):
        tv, tvu = types.ModuleType("torchvision"), types.ModuleType("torchvision.utils")
        tv.utils = tvu
        sys.modules.update({"torchvision": tv, "torchvision.utils": tvu})
        stubbed.append("torchvision")
    if absent("huggingface_hub"):
        hh = types.ModuleType("huggingface_hub")
        hh.PyTorchModelHubMixin = _Anything
        sys.modules["huggingface_hub"] = hh
        stubbed.append("huggingface_hub")
    if stubbed:
        notes.append(f"not installed here: {', '.join(stubbed)}; stand-ins for the names the reference code "
                     f"imports (none is used by a timed step)")


def aim_reference(root: str, preset: str, device: torch.device, notes: list[str], *, smoke: bool,
                  vocab: int, tokens: int) -> tuple[torch.nn.Module, Callable]:
    """The AiM authors' model (``models.aim``) and their trainer's loss (``trainer.Stage2Trainer.compute_loss``)."""
    root = str(Path(root).resolve())
    if not (Path(root) / "models" / "aim.py").is_file():
        raise SystemExit(f"--aim-root {root} has no models/aim.py: point it at a checkout of github.com/hp-l33/AiM")
    if root not in sys.path:
        sys.path.insert(0, root)
    _stub_absent(notes)
    import_mamba_ssm()  # its Mamba-2 modules, without the compiled Mamba-1 extension
    aim_module = importlib.import_module("models.aim")
    trainer_module = importlib.import_module("trainer")
    torch.manual_seed(0)
    if smoke:  # the tiny preset's shape through the same constructor
        from models.stage2.config_mamba import MambaConfig

        model = aim_module.AiM(MambaConfig(d_model=64, n_layer=2, vocab_size=vocab, num_tokens=tokens,
                                           num_classes=CLASSES, adaln_group=True, num_groups=2))
    else:
        model = aim_module.AiM_models[AIM_NAMES[preset]]()
    model = model.to(device).train()
    try:
        import causal_conv1d  # noqa: F401
    except ImportError:  # the fused whole-sequence path needs it; the unfused path computes the same
        for layer in model.mamba.backbone.layers:
            layer.mixer.use_mem_eff_path = False
        if "no causal-conv1d" not in " ".join(notes):
            notes.append("AiM reference: no causal-conv1d, so its mixers take mamba-ssm's unfused path")

    def loss(codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # their Trainer's compute_loss (it uses nothing of the Trainer itself); label dropout is inside their model
        return trainer_module.Stage2Trainer.compute_loss(None, model, {"inputs": codes, "labels": labels})

    return model, loss


def _reference_decay_groups(model: torch.nn.Module) -> list[dict]:
    """Their trainer's grouping: names relative to ``model.mamba`` never match the full names: no decay."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [{"params": trainable, "weight_decay": 0.0}]


# --------------------------------------------------------------------------- timing


def time_step(step: Callable[[], Any], device: torch.device, *, warmup_steps: int, windows: int,
              window_steps: int) -> dict[str, Any]:
    synchronize(device)
    t0 = time.perf_counter()
    step()
    synchronize(device)
    first = time.perf_counter() - t0
    for _ in range(warmup_steps):
        step()
    synchronize(device)
    times, host = [], []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(window_steps):
            step()
        queued = time.perf_counter() - t0  # the host has queued the window's work
        synchronize(device)
        elapsed = time.perf_counter() - t0
        times.append(elapsed / window_steps)
        host.append(queued / elapsed)
    return {"first": first, "step_times": times, "host_fractions": host}


def run(name: str, loss_fn: Callable, params: list, device: torch.device, *, batch: int, vocab: int, tokens: int,
        flops: dict, matmul: float, opt_groups: list | None = None, timing: dict,
        graph_dropout: Callable | None = None) -> dict:
    """Time one row; ``graph_dropout`` (the conditioner's ``drop_labels``): the step replayed from a CUDA graph as
    ``train.cuda_graph`` does, labels dropped on the host and copied in (``loss_fn`` then drops none)."""
    opt = torch.optim.AdamW(opt_groups or [{"params": params, "weight_decay": 0.05}], lr=1e-4, betas=(0.9, 0.95),
                            fused=device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    codes = torch.randint(0, vocab, (batch, tokens), device=device, generator=gen)
    labels = torch.randint(0, CLASSES, (batch,), device=device, generator=gen)
    reset_peak_memory(device)

    def update(c: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=graph_dropout is None):
            loss = loss_fn(c, lab)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.detach()

    if graph_dropout is None:
        def step() -> torch.Tensor:
            loss = update(codes, labels)
            opt.zero_grad(set_to_none=True)
            return loss
    else:
        from avgkit.train.step_graph import StepGraph

        graphed = StepGraph(lambda c, lab: (update(c, lab),), opt, device=device)  # on the CPU: eager, same buffers
        host = torch.Generator().manual_seed(1)
        pin = device.type == "cuda"
        host_codes, host_labels = codes.cpu(), labels.cpu()
        host_codes = host_codes.pin_memory() if pin else host_codes

        def step() -> torch.Tensor:
            dropped = graph_dropout(host_labels, host)
            return graphed(host_codes, dropped.pin_memory() if pin else dropped)[0]

    t = time_step(step, device, **timing)
    med = statistics.median(t["step_times"])
    tok = [batch * tokens / s for s in t["step_times"]]
    tok_s = batch * tokens / med
    row = {"model": name, "batch": batch, "params": flops["params"], "token_params": flops["token_params"],
           "step_s": round(med, 4), "tokens_per_s": round(tok_s), "tokens_per_s_spread": [round(min(tok)),
                                                                                          round(max(tok))],
           "windows": len(tok), "first_step_s": round(t["first"], 2), "peak_mem_gib": peak_memory_gib(device),
           "host_fraction": round(statistics.median(t["host_fractions"]), 3),
           "mfu": round(flops["flops"] * tok_s / (matmul * 1e12), 4),
           "mfu_6n": round(flops["flops_6n"] * tok_s / (matmul * 1e12), 4)}
    row["_step"] = step
    print({k: v for k, v in row.items() if k != "_step"}, flush=True)
    return row


def avgkit_loss(model: ARModel, compile_: str = "off", backend: str = "inductor", dropped: bool = False) -> Callable:
    """The trainer's loss call, with ``train.compile``'s choice applied (off, model or blocks); ``dropped``: the
    labels come with label dropout applied (a graph-replayed step drops them on the host, as the trainer does)."""
    if compile_ == "blocks":
        compile_blocks(model.backbone, backend=backend)
    net = torch.compile(model, backend=backend) if compile_ == "model" else model

    def loss(codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if dropped:
            return net(codes, labels, loss=True)
        gen = torch.Generator(device=codes.device).manual_seed(1)
        return net(codes, model.conditioner.drop_labels(labels, gen), loss=True)

    return loss


# --------------------------------------------------------------------------- profile


def _category(name: str) -> str:
    n = name.lower()
    rules = (("optimizer", ("adam", "multi_tensor", "foreach")), ("scan", ("ssd", "chunk_", "state_passing",
             "bmm_chunk", "_scan")), ("loss", ("softmax", "logsumexp", "nll", "cross_entropy", "scatter", "gather")),
             ("matmul", ("gemm", "matmul", "cutlass", "sm90", "sm80", "nvjet", "addmm", "mm", "cublas")),
             ("conv", ("conv",)), ("norm", ("norm", "rsqrt")), ("copy/cast", ("copy", "cast", "to_copy")))
    for cat, keys in rules:
        if any(k in n for k in keys):
            return cat
    return "elementwise/other"


def profile_step(step: Callable, device: torch.device, out: Path, label: str) -> dict:
    """One training step under torch.profiler: a per-kernel table (.txt) and the same rows as JSON."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    synchronize(device)
    with profile(activities=acts) as prof:
        step()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    rows = []
    for e in events:
        t = getattr(e, "self_device_time_total", None) if device.type == "cuda" else e.self_cpu_time_total
        t = t if t is not None else getattr(e, key, 0)
        if t and (device.type != "cuda" or e.device_type == torch.autograd.DeviceType.CUDA):
            rows.append({"name": e.key, "calls": e.count, "self_us": round(float(t), 1), "category": _category(e.key)})
    rows.sort(key=lambda r: -r["self_us"])
    total = sum(r["self_us"] for r in rows) or 1.0
    by_cat: dict[str, float] = {}
    for r in rows:
        r["share"] = round(r["self_us"] / total, 4)
        by_cat[r["category"]] = by_cat.get(r["category"], 0.0) + r["self_us"]
    out.parent.mkdir(parents=True, exist_ok=True)
    table = events.table(sort_by=key, row_limit=60, max_name_column_width=90)
    cats = "\n".join(f"{c:>20s} {v / 1e3:10.2f} ms {v / total:7.1%}" for c, v in sorted(by_cat.items(),
                                                                                      key=lambda kv: -kv[1]))
    out.with_suffix(".txt").write_text(f"{label}: one training step, {device}\n\nby category (self time):\n{cats}\n\n"
                                       f"{table}\n")
    summary = {"label": label, "device": str(device), "total_self_ms": round(total / 1e3, 2),
               "by_category_ms": {c: round(v / 1e3, 2) for c, v in by_cat.items()}, "kernels": rows[:200]}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out.with_suffix('.txt')} and {out.with_suffix('.json')}", flush=True)
    return {k: v for k, v in summary.items() if k != "kernels"}


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="aim-b,aim-l")
    ap.add_argument("--variants", default="plain,chunked,ckpt", help=f"avgkit rows: {', '.join(VARIANTS)}")
    ap.add_argument("--profile-variant", default="chunked", help="the row --profile breaks down by kernel")
    ap.add_argument("--profile-preset", default="aim-b", help="the preset of the row --profile breaks down")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend of the compile rows (the smoke run uses aot_eager: no C++ build)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--windows", type=int, default=5, help="timing windows (tokens/s is their median)")
    ap.add_argument("--window-steps", type=int, default=5)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--aim-root", default=os.environ.get("AIM_ROOT"),
                    help="checkout of github.com/hp-l33/AiM: its trainer step is timed beside avgkit's")
    ap.add_argument("--reference-presets", default="aim-b,aim-l", help="presets also run as reference rows")
    ap.add_argument("--no-reference", action="store_true", help="neither the AiM code nor the mamba-ssm stack")
    ap.add_argument("--no-stack", action="store_true", help="no mamba-ssm stack rows (the AiM code's rows stay)")
    ap.add_argument("--profile", default=None, metavar="PATH",
                    help="also profile one step by kernel (--profile-preset, --profile-variant): PATH.txt and PATH.json")
    ap.add_argument("--reference-first", action="store_true",
                    help="each preset's reference rows before its avgkit rows (no compile workers running beside them)")
    ap.add_argument("--knobs", default="",
                    help="MODULE.NAME=VALUE,... of avgkit_mamba.ops set for the -knobs variant's rows")
    ap.add_argument("--quick", action="store_true", help="AiM-B only")
    ap.add_argument("--out", default=None)
    add_smoke_flag(ap)
    args = ap.parse_args()
    device = device_for(args.smoke)
    presets = ["tiny"] if args.smoke else ["aim-b"] if args.quick else args.presets.split(",")
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --variants {unknown}; choose from {', '.join(VARIANTS)}")
    batch = SMOKE["batch"] if args.smoke else args.batch
    vocab, tokens = (SMOKE["vocab"], SMOKE["tokens"]) if args.smoke else (VOCAB, TOKENS)
    timing = {"warmup_steps": SMOKE["warmup_steps"] if args.smoke else args.warmup_steps,
              "windows": SMOKE["windows"] if args.smoke else max(5, args.windows),
              "window_steps": SMOKE["window_steps"] if args.smoke else args.window_steps}
    notes: list[str] = []
    matmul = matmul_tflops(device, SMOKE["matmul"] if args.smoke else MATMUL, 3 if args.smoke else 20)
    print(f"bf16 {SMOKE['matmul'] if args.smoke else MATMUL}^3 matmul: {matmul:.1f} TFLOP/s", flush=True)
    ref_presets = set(args.reference_presets.split(",")) | ({"tiny"} if args.smoke else set())
    stack = False
    if args.no_reference or args.no_stack:
        notes.append("--no-reference: no reference rows" if args.no_reference else "--no-stack: no mamba-ssm stack rows")
    elif device.type != "cuda":
        notes.append("CPU run: no mamba-ssm stack rows (its kernels need a GPU)")
    elif _stub_absent(notes) or import_mamba_ssm() is None:
        notes.append("mamba-ssm not importable: no mamba-ssm stack rows")
    else:
        stack = True
    if not args.no_reference and not args.aim_root:
        notes.append("no --aim-root: the AiM authors' trainer step not measured")
    rows: list[dict] = []
    profiles = {}
    size = {"batch": batch, "vocab": vocab, "tokens": tokens}
    name = "train_step_quick" if args.quick else "train_step"

    def save(quiet: bool = True) -> None:  # after every row: a run stopped at its time limit keeps what it measured
        _speedups(rows)
        # three significant digits: the smoke run's CPU rate is well under 0.1 TFLOP/s
        write_result(name, {"matmul_tflops": float(f"{matmul:.3g}"), "timing": timing, "rows": rows, "notes": notes,
                            "profile": profiles}, smoke_out(name, args.out, args.smoke), quiet=quiet)

    knobs = parse_knobs(args.knobs)

    def reference_rows(preset: str, flops: dict) -> None:
        if preset not in ref_presets or args.no_reference:
            return
        if args.aim_root and (preset in AIM_NAMES or args.smoke):
            model, loss = aim_reference(args.aim_root, preset, device, notes, smoke=args.smoke, vocab=vocab,
                                        tokens=tokens)
            try:
                row = run(f"AiM reference {preset}", loss, [p for p in model.parameters() if p.requires_grad], device,
                          flops=flops, matmul=matmul, opt_groups=_reference_decay_groups(model), timing=timing, **size)
                row.pop("_step")
                rows.append(row)
                save()
            except torch.OutOfMemoryError as err:
                notes.append(f"AiM reference {preset} batch {batch}: out of memory ({str(err).splitlines()[0]})")
            del model, loss
            empty_cache(device)
        if stack:
            from avgkit_mamba.reference import reference_backbone

            base = build(preset, device=device, vocab=vocab, tokens=tokens)
            ref = ARModel(reference_backbone(base.backbone, mem_eff_path=False), base.conditioner)
            ref.fused_loss = False  # the stack as it was: full logits
            row = run(f"mamba-ssm stack {preset}", avgkit_loss(ref), [p for p in ref.parameters() if p.requires_grad],
                      device, flops=flops, matmul=matmul, timing=timing, **size)
            row.pop("_step")
            rows.append(row)
            save()
            del ref, base
            empty_cache(device)

    for preset in presets:
        extra = {"chunk_size": 16} if args.smoke else {}
        flops = None
        if args.reference_first:  # the same FLOPs count as the avgkit rows', from a model with no storage
            flops = flops_per_token(build(preset, device="meta", vocab=vocab, tokens=tokens, **extra), tokens)
            reference_rows(preset, flops)
        for variant in variants:
            spec = VARIANTS[variant]
            torch._dynamo.reset()  # each row compiles afresh, as its own process would (no shared cache limit)
            opts = {**extra, **{k: spec[k] for k in ("activation_checkpointing", "checkpoint_every", "residual_in_fp32",
                                                     "recompute_norms", "chunk_size")
                                if k in spec and not (k == "chunk_size" and args.smoke)}}
            model = build(preset, device=device, vocab=vocab, tokens=tokens, **opts)
            model.fused_loss = spec["fused"]
            model.compile_loss = spec.get("compile_loss", False)
            flops = flops or flops_per_token(model, tokens)
            switches = [(conv_torch, "SHIFTS_WHEN_COMPILING", spec.get("shift_conv", conv_torch.SHIFTS_WHEN_COMPILING)),
                        (dispatch, "TRITON_CONV", spec.get("triton_conv", dispatch.TRITON_CONV)),
                        (dispatch, "TRITON_MIXER_CORE", spec.get("triton_core", dispatch.TRITON_MIXER_CORE)),
                        *(knobs if spec.get("knobs") else [])]
            graph = spec.get("graph", False)
            try:
                with settings(switches):
                    row = run(f"avgkit {preset} {variant}", avgkit_loss(model, spec.get("compile", "off"),
                                                                        args.compile_backend, dropped=graph),
                              [p for p in model.parameters() if p.requires_grad], device, flops=flops, matmul=matmul,
                              timing=timing, graph_dropout=model.conditioner.drop_labels if graph else None, **size)
            except torch.OutOfMemoryError as err:  # report the size that does not fit, go on
                notes.append(f"{preset} {variant} batch {batch}: out of memory ({str(err).splitlines()[0]})")
                del model
                empty_cache(device)
                continue
            if spec.get("knobs"):
                row["knobs"] = args.knobs
            step = row.pop("_step")
            if args.profile and variant == args.profile_variant and preset in (args.profile_preset, "tiny") and not profiles:
                profiles[f"{preset} {variant}"] = profile_step(step, device, Path(args.profile),
                                                               f"avgkit {preset} {variant}, batch {batch}")
            rows.append(row)
            save()
            del model, step
            empty_cache(device)
        if not args.reference_first:
            assert flops is not None
            reference_rows(preset, flops)
    save(quiet=False)


def parse_knobs(spec: str) -> list[tuple[Any, str, Any]]:
    """``triton_ssd.DCB_BLOCK=128,triton_gated_norm.ROW_TILE=2`` -> [(module, name, value)] of avgkit_mamba.ops
    (values: integers, none, true, false)."""
    out = []
    for item in filter(None, spec.split(",")):
        target, _, raw = item.partition("=")
        mod_name, _, attr = target.rpartition(".")
        try:
            module = importlib.import_module(f"avgkit_mamba.ops.{mod_name}")
        except ImportError:
            module = None
        if module is None or not mod_name or not hasattr(module, attr):
            raise SystemExit(f"--knobs {item!r}: avgkit_mamba.ops.{mod_name} has no setting {attr!r}")
        value: Any = {"none": None, "true": True, "false": False}.get(raw.lower(), raw)
        if isinstance(value, str):
            if not value.lstrip("-").isdigit():
                raise SystemExit(f"--knobs {item!r}: the value must be an integer, none, true or false")
            value = int(value)
        out.append((module, attr, value))
    return out


def _speedups(rows: list[dict]) -> None:
    """Each avgkit row's tokens/s over the reference rows of its preset."""
    for row in rows:
        if not row["model"].startswith("avgkit "):
            continue
        preset = row["model"].split()[1]
        for ref, key in (("AiM reference", "vs_aim_reference"), ("mamba-ssm stack", "vs_mamba_ssm_stack")):
            match = [r for r in rows if r["model"] == f"{ref} {preset}"]
            if match:
                row[key] = round(row["tokens_per_s"] / match[0]["tokens_per_s"], 2)


if __name__ == "__main__":
    main()
