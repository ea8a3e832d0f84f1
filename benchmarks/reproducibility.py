"""Are GPU samples reproducible? Where do two identical runs first differ, and does the image depend on the batch?

Two parts, both on AiM-B and GPT-B (random weights, bf16, CFG 2; AiM-B with the recipe's decoding state, int8 for
a bf16 model):

* ``diagnose``: the same work twice from identical inputs, compared bit for bit at each
  stage in order: prefill logits and every tensor of the decoding state; every decoding
  step of an image run twice from the same state (a differing step is re-run with every
  module's inputs and outputs recorded by forward hooks: the first module whose output
  differs although its inputs agree is the culprit); the filter-and-draw on one set of
  logits; whole sampling calls.
* ``matrix``: for each code path (eager, CUDA graph, compiled step in the graph) and
  filter setting (none; top-k 600 + top-p 0.98), 64 images (image i of class i) sampled
  twice, and again in calls of 16, all with ``decode_width`` 32: the number of images
  whose tokens differ from the first call.

    python benchmarks/reproducibility.py [--parts diagnose,matrix] [--models aim-b,gpt-b] [--out FILE]
    python benchmarks/reproducibility.py --parts diagnose --models gpt-b/sdpa   # the step on PyTorch's fused SDPA
    python benchmarks/reproducibility.py --models aim-b/bf16,aim-b/one-launch  # the bf16 state, the one-launch step
    python benchmarks/reproducibility.py --smoke     # the same procedure on the CPU, tiny models
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import write_result  # noqa: E402
from sampling import SMOKE, build_aim, build_gpt  # noqa: E402

from avgkit.interfaces import Conditioning  # noqa: E402
from avgkit.sample.ar import ARSampler, ARSamplerConfig  # noqa: E402
from avgkit.sample.filtering import sample_logits  # noqa: E402
from avgkit.testing.reproducibility import first_difference, sample_runs  # noqa: E402

N_IMAGES, WIDTH, PART = 64, 32, 16
FILTERS = {"none": {}, "paper": {"top_k": 600, "top_p": 0.98}}
PATHS = {"eager": {"cuda_graph": False}, "graph": {"cuda_graph": True}, "compiled": {"cuda_graph": True, "compile": True}}


def _tensors(obj: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor inside a decoding state (dataclasses, lists), with a path name."""
    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in _tensors(getattr(obj, f.name), f"{prefix}.{f.name}")]
    if isinstance(obj, (list, tuple)):
        return [t for i, v in enumerate(obj) for t in _tensors(v, f"{prefix}[{i}]")]
    return []


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict | None:
    if a.shape != b.shape:
        return {"shape": [list(a.shape), list(b.shape)]}
    if torch.equal(a, b):
        return None
    ne = a != b
    out: dict[str, Any] = {"elements_differing": int(ne.sum()), "of": a.numel()}
    if a.is_floating_point():
        out["max_abs"] = float((a.float() - b.float()).abs().max())
    if a.dim() >= 1:
        out["rows_differing"] = int(ne.reshape(a.shape[0], -1).any(1).sum()) if a.dim() > 1 else None
    return out


def _first_state_diff(sa: Any, sb: Any) -> dict | None:
    for (name, a), (_, b) in zip(_tensors(sa), _tensors(sb), strict=True):
        d = _diff(a, b)
        if d is not None:
            return {"tensor": name, **d}
    return None


class _Recorder:
    """Forward hooks on every submodule: (name, inputs, output) in call order."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[str, list[torch.Tensor], list[torch.Tensor]]] = []
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in model.named_modules() if n]

    def _hook(self, name: str):
        def hook(_m, inputs, output):
            flat = lambda v: [t.detach().clone() for t in (v if isinstance(v, (list, tuple)) else [v])  # noqa: E731
                              if isinstance(t, torch.Tensor)]
            self.calls.append((name, flat(inputs), flat(output)))
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _first_module_diff(rec_a: _Recorder, rec_b: _Recorder) -> dict | None:
    for (name, ia, oa), (_, ib, ob) in zip(rec_a.calls, rec_b.calls, strict=False):
        inputs_equal = all(torch.equal(x, y) for x, y in zip(ia, ib, strict=False))
        for x, y in zip(oa, ob, strict=False):
            d = _diff(x, y)
            if d is not None:
                return {"module": name, "inputs_equal": inputs_equal, **d}
    return None


def _cond_batch(cond_model, labels: torch.Tensor) -> Conditioning:
    return Conditioning.cat([cond_model(labels), cond_model.null(labels.shape[0], labels.device)]).to(torch.bfloat16)


def lockstep(backbone, state, logits, cond, steps: int, detail: int = 3) -> dict:
    """Every decoding step run twice from the same state and token; the steps that differ.

    The second copy is re-aligned after a differing step, so each step is judged on its
    own; the first ``detail`` differing steps are re-run under forward hooks to name the
    first module whose output differs.
    """
    s1, s2 = state, copy.deepcopy(state)
    tok = logits.float().argmax(-1)
    differing: list[dict] = []
    count = 0
    for k in range(steps):
        pre = copy.deepcopy(s1) if len(differing) < detail else None
        l1, l2 = backbone.step(s1, tok, cond), backbone.step(s2, tok, cond)
        logit_diff, state_diff = _diff(l1, l2), _first_state_diff(s1, s2)
        if logit_diff or state_diff:
            count += 1
            if pre is not None:
                recs = []
                for s in (pre, copy.deepcopy(pre)):
                    rec = _Recorder(backbone)
                    backbone.step(s, tok, cond)
                    rec.close()
                    recs.append(rec)
                differing.append({"step": k + 1, "logits": logit_diff, "state": state_diff,
                                  "first_module": _first_module_diff(*recs)})
            s2 = copy.deepcopy(s1)
        tok = l1.float().argmax(-1)
    return {"checked": steps, "differing": count, "first": differing}


def diagnose(name: str, backbone, cond_model, device: str, steps: int | None = None) -> dict:
    """The same prefill, steps and draws twice from identical inputs; the first stage that differs."""
    labels = torch.arange(N_IMAGES, device=device) % cond_model.num_classes
    steps = backbone.num_tokens - 1 if steps is None else steps
    out: dict[str, Any] = {"model": name}
    with torch.inference_mode():
        cond = _cond_batch(cond_model, labels)
        rows = cond.batch_size
        sa, sb = backbone.init_state(rows, device=device), backbone.init_state(rows, device=device)
        la, lb = backbone.prefill(sa, cond), backbone.prefill(sb, cond)
        out["prefill_logits"] = _diff(la, lb)
        out["prefill_state"] = _first_state_diff(sa, sb)
        out["prefill_state_tensors_differing"] = [n for (n, a), (_, b) in zip(_tensors(sa), _tensors(sb), strict=True)
                                                  if not torch.equal(a, b)]
        out["steps"] = lockstep(backbone, copy.deepcopy(sa), la, cond, steps)
        # the draw alone, on one set of guided logits, with the paper's filters
        cond_l, uncond_l = la.float().chunk(2)
        guided = uncond_l + 2.0 * (cond_l - uncond_l)
        u = torch.rand(guided.shape[0], device=device, dtype=torch.float64)
        k = min(600, guided.shape[-1] // 2)
        out["draw_top_k_top_p"] = _diff(sample_logits(guided, u, top_k=k, top_p=0.98),
                                        sample_logits(guided, u, top_k=k, top_p=0.98))
        out["topk_indices"] = _diff(torch.topk(guided, k, dim=-1).indices, torch.topk(guided, k, dim=-1).indices)
        out["logit_ties_in_top_k"] = int((torch.topk(guided, k, dim=-1).values.diff(dim=-1) == 0).sum())
    # whole calls, eager and graphed
    for path in ("eager", "graph"):
        sampler = ARSampler(ARSamplerConfig(cfg_scale=2.0, **FILTERS["paper"], **PATHS[path]))
        a = sampler.sample(backbone, cond_model, labels, seed=0, dtype=torch.bfloat16)
        b = sampler.sample(backbone, cond_model, labels, seed=0, dtype=torch.bfloat16)
        differ = (a != b).any(1)
        first = int((a != b).float().argmax(1)[differ].min()) if differ.any() else None
        out[f"sample_{path}"] = {"images_differing": int(differ.sum()), "of": N_IMAGES, "first_token_differing": first}
    print(json.dumps(out, default=str), flush=True)
    return out


def matrix(name: str, backbone, cond_model, device: str, paths: list[str], notes: list[str], rows: list[dict],
           save=lambda: None) -> list[dict]:
    for path in paths:
        if path == "graph" and device != "cuda":
            continue
        for filt, opts in FILTERS.items():
            cfg = ARSamplerConfig(cfg_scale=2.0, decode_width=WIDTH, **opts, **PATHS[path])
            t0 = time.perf_counter()
            try:
                with _compile_backend("aot_eager" if device == "cpu" else None):
                    runs = sample_runs(backbone, cond_model, cfg, n=N_IMAGES, part=PART)
            except Exception as err:  # report, don't hide
                notes.append(f"{name} {path} {filt}: {type(err).__name__}: {str(err)[:300]}")
                continue
            row = {"model": name, "path": path, "filters": filt, "of": N_IMAGES, "decode_width": WIDTH,
                   "repeat_call": first_difference(runs["once"], runs["again"]) or "identical",
                   f"calls_of_{PART}": first_difference(runs["once"], runs["parts"]) or "identical",
                   "seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            save()
    return rows


@contextlib.contextmanager
def _compile_backend(backend: str | None):
    """The smoke run traces the compiled path with ``aot_eager`` (no inductor C++ build on the CPU)."""
    saved = ARSampler.compile_backend
    if backend:
        ARSampler.compile_backend = backend
    try:
        yield
    finally:
        ARSampler.compile_backend = saved


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="diagnose,matrix")
    ap.add_argument("--models", default="aim-b,gpt-b")
    ap.add_argument("--paths", default="eager,graph,compiled")
    ap.add_argument("--torch-deterministic", action="store_true",
                    help="torch.use_deterministic_algorithms(True) with CUBLAS_WORKSPACE_CONFIG=:4096:8 (does "
                         "PyTorch's own deterministic mode change the answer?)")
    ap.add_argument("--decode-width", type=int, default=None,
                    help="the matrix's decode width (default 32: 64 rows with CFG; 16 puts 32 rows through kernels "
                         "that choose by rows, such as step_kernel fused-in-proj's batch-16 case)")
    ap.add_argument("--smoke", action="store_true", help="the procedure on the CPU with tiny models")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if args.torch_deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    global N_IMAGES, WIDTH, PART, FILTERS
    if args.smoke:  # a few images, the paper's filters only: the procedure, not a measurement
        N_IMAGES, WIDTH, PART, FILTERS = 4, 2, 1, {"paper": FILTERS["paper"]}
    if args.decode_width is not None:
        if args.decode_width < 1:
            ap.error(f"--decode-width {args.decode_width}: give a positive number of images")
        WIDTH = args.decode_width
    shape = {"vocab": SMOKE["vocab"], "tokens": SMOKE["tokens"], "classes": SMOKE["classes"]} if args.smoke else {}
    parts, notes = args.parts.split(","), []
    result: dict[str, Any] = {"diagnosis": [], "matrix": [], "notes": notes,
                              "torch_deterministic": args.torch_deterministic}

    def save() -> None:  # after every row: a run stopped at its time limit keeps what it measured
        write_result("reproducibility_smoke" if args.smoke else "reproducibility", result, args.out, quiet=True)

    for name in args.models.split(","):
        # gpt-b/sdpa: the step attends with PyTorch's fused kernel; aim-b/torch: every op on the PyTorch path;
        # aim-b/bf16, aim-b/int8, aim-b/fp32: that decoding state (aim-b: the default); aim-b/one-launch,
        # aim-b/fused-in-proj, aim-b/auto: that step kernel; aim-b/recurrent, aim-b/chunked: that decoding layout
        base, _, variant = name.partition("/")
        preset = SMOKE["aim" if base.startswith("aim") else "gpt"] if args.smoke else base
        if base.startswith("aim"):
            option = ("state_dtype" if variant in ("bf16", "fp32", "int8") else
                      "step_kernel" if variant in ("two-launch", "one-launch", "fused-in-proj", "auto") else
                      "decode_form" if variant in ("recurrent", "chunked") else "impl")
            bb, cond = build_aim(preset, device=device, **shape, **({option: variant} if variant else {}))
        else:
            bb, cond = build_gpt(preset, device=device, **shape, **({"decode_attention": variant} if variant else {}))
        if "diagnose" in parts:
            result["diagnosis"].append(diagnose(name, bb, cond, device))
            save()
        if "matrix" in parts:
            matrix(name, bb, cond, device, args.paths.split(","), notes, result["matrix"], save)
        del bb, cond
        torch._dynamo.reset()
        if device == "cuda":
            torch.cuda.empty_cache()
    write_result("reproducibility_smoke" if args.smoke else "reproducibility", result, args.out)
    for n in notes:
        print("note:", n)


if __name__ == "__main__":
    main()
