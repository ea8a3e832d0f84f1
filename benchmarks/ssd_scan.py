"""Forward and forward+backward time of the chunked SSD scan at the AiM-B training shape.

Compares avgkit's Triton scan, its PyTorch path and, when importable, mamba-ssm's
``mamba_chunk_scan_combined``, on the same bf16 inputs (batch 64, 256 tokens, 24 heads,
head dim 64, d_state 128, one group, chunk 256; dt_bias + softplus and D as in the
Mamba-2 mixer). Times are medians of CUDA-event timings after warm-up (the first call,
with Triton compilation and autotuning, is reported separately).

    python benchmarks/ssd_scan.py --out ssd_scan.json [--quick] [--mamba-src PATH]
    python benchmarks/ssd_scan.py --smoke --out FILE   # tiny fp32 shapes on the CPU, Triton interpreted

``--mamba-src`` (or env ``MAMBA_SSM_SRC``) loads mamba-ssm's Triton ops from a source
checkout when the package is not installed (its compiled extension is not needed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

if "--smoke" in sys.argv:  # the Triton interpreter must be chosen before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from common import add_smoke_flag, device_for, empty_cache, median_ms, rel_diff, settings, synchronize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {"batch": 1, "seqlen": 16, "nheads": 2, "headdim": 8, "dstate": 16, "chunk": 8, "dtype": "float32"}
try:
    import avgkit_mamba  # noqa: F401
except ImportError:  # running from a source checkout
    sys.path.insert(0, str(ROOT / "plugins" / "mamba"))


def load_mamba_ssm(src: str | None) -> tuple[Callable | None, str]:
    """mamba-ssm's combined scan and its version, or (None, reason)."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as exc:  # not installed, or its package import needs the CUDA extension
        if not src:
            return None, f"not importable ({type(exc).__name__}); pass --mamba-src"
        pkg_dir = Path(src) / "mamba_ssm"
        for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            del sys.modules[name]
        pkg = types.ModuleType("mamba_ssm")  # skip the package __init__ (compiled extension)
        pkg.__path__ = [str(pkg_dir)]
        sys.modules["mamba_ssm"] = pkg
        try:
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        except Exception as exc2:
            return None, f"not importable from {src}: {exc2}"
    version = "unknown"
    try:
        import mamba_ssm

        version_file = Path(list(mamba_ssm.__path__)[0]) / "__init__.py"
        for line in version_file.read_text().splitlines():
            if line.startswith("__version__"):
                version = line.split("=")[1].strip().strip("\"'")
    except Exception:
        pass
    return mamba_chunk_scan_combined, version


def make_inputs(batch: int, seqlen: int, nheads: int, headdim: int, dstate: int, dtype: torch.dtype,
                device: torch.device | str = "cuda") -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
    return {
        "x": r(batch, seqlen, nheads, headdim).to(dtype),
        "dt": (r(batch, seqlen, nheads) * 0.5).to(dtype),
        "A": -torch.exp(torch.rand(nheads, generator=g, device=device) * 2.77),
        "B": r(batch, seqlen, 1, dstate).to(dtype),
        "C": r(batch, seqlen, 1, dstate).to(dtype),
        "D": torch.ones(nheads, device=device),
        "dt_bias": torch.log(torch.expm1(torch.exp(torch.rand(nheads, generator=g, device=device) * 4.6 - 6.9))),
    }


def call(scan: Callable, leaves: dict, chunk: int) -> torch.Tensor:
    """The scan of ``leaves`` (``make_inputs``'s names) as the Mamba-2 mixer calls it (dt_bias, softplus, D)."""
    return scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], chunk, D=leaves["D"],
                dt_bias=leaves["dt_bias"], dt_softplus=True)


def bench(scan: Callable, t: dict, chunk: int, warmup: int, reps: int) -> dict:
    """First call (compilation, autotuning), then median milliseconds (CUDA events on a GPU) of fwd and fwd+bwd."""
    device = t["x"].device
    leaves = {k: v.clone().requires_grad_() for k, v in t.items()}
    dout = torch.randn_like(t["x"])

    def fwd() -> torch.Tensor:
        return call(scan, leaves, chunk)

    def fwd_bwd() -> None:
        for v in leaves.values():
            v.grad = None
        fwd().backward(dout)

    synchronize(device)
    start = time.perf_counter()
    fwd_bwd()
    synchronize(device)
    first = time.perf_counter() - start
    with torch.no_grad():
        fwd_ms = median_ms(device, fwd, warmup, reps)
    return {"first_call_s": round(first, 3), "fwd_ms": round(fwd_ms, 4),
            "fwd_bwd_ms": round(median_ms(device, fwd_bwd, warmup, reps), 4)}


def grads(scan: Callable, t: dict, chunk: int) -> dict[str, torch.Tensor]:
    """Every input's gradient for one fixed output gradient (fp32 copies)."""
    leaves = {k: v.clone().requires_grad_() for k, v in t.items()}
    dout = torch.randn(t["x"].shape, generator=torch.Generator(device=t["x"].device).manual_seed(1),
                       device=t["x"].device).to(t["x"].dtype)
    call(scan, leaves, chunk).backward(dout)
    return {k: v.grad.float() for k, v in leaves.items()}


def dcb_sweep(spec: str, t: dict, chunk: int, warmup: int, reps: int) -> dict:
    """The backward's dCB kernel at each ``TILExSPLIT`` of ``spec`` (tile: DCB_BLOCK, split: DCB_HEAD_SPLIT): fwd+bwd
    time, and each gradient's largest difference from the first entry's, relative to that gradient's largest value
    (the tile and split change only the order of fp32 sums)."""
    from avgkit_mamba.ops import triton_ssd
    from avgkit_mamba.ops.triton_ssd import chunk_scan_triton

    out: dict[str, dict] = {}
    first: dict[str, torch.Tensor] | None = None
    for entry in spec.split(","):
        tile, split = (int(v) for v in entry.split("x"))
        with settings([(triton_ssd, "DCB_BLOCK", tile), (triton_ssd, "DCB_HEAD_SPLIT", split)]):
            row = bench(chunk_scan_triton, t, chunk, warmup, reps)
            g = grads(chunk_scan_triton, t, chunk)
        if first is None:
            first = g
        row["max_rel_diff"] = max(rel_diff(g[k], first[k]) for k in g)
        out[entry] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("ssd_scan.json"), help="JSON results path")
    parser.add_argument("--quick", action="store_true", help="batch 8 and few repeats")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--nheads", type=int, default=24)
    parser.add_argument("--headdim", type=int, default=64)
    parser.add_argument("--dstate", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--impls", default="triton,triton-dcb-pblocks,triton-dcb-split,torch,mamba_ssm",
                        help="comma-separated subset (triton-dcb-split: the dCB kernel's heads over four programs; "
                             "triton-dcb-pblocks: its P in autotuned blocks inside the head loop, not DCB_ONE_P)")
    parser.add_argument("--dcb-sweep", default="",
                        help="comma-separated TILExSPLIT entries (e.g. 64x1,64x4,128x4): time the dCB kernel's tile "
                             "and head split, the first entry the baseline of the gradient comparison")
    parser.add_argument("--mamba-src", default=os.environ.get("MAMBA_SSM_SRC"), help="mamba-ssm source checkout")
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":  # main(argv) called in-process without --smoke in sys.argv
            print("--smoke needs TRITON_INTERPRET=1 set before Triton is imported", file=sys.stderr)
            return 2
        vars(args).update(SMOKE)
    device = device_for(args.smoke, "ssd_scan")
    batch = 8 if args.quick else args.batch
    warmup, reps = (0, 1) if args.smoke else (2, 5) if args.quick else (10, 50)
    dtype = getattr(torch, args.dtype)
    t = make_inputs(batch, args.seqlen, args.nheads, args.headdim, args.dstate, dtype, device)

    from avgkit_mamba.ops import triton_ssd
    from avgkit_mamba.ops.ssd_torch import ssd_chunk_scan
    from avgkit_mamba.ops.triton_ssd import chunk_scan_triton

    impls: dict[str, Callable | None] = {"triton": chunk_scan_triton, "triton-dcb-split": chunk_scan_triton,
                                         "triton-dcb-pblocks": chunk_scan_triton, "torch": ssd_chunk_scan}
    head_split, one_p = triton_ssd.DCB_HEAD_SPLIT, triton_ssd.DCB_ONE_P
    notes: dict[str, str] = {}
    mamba_version = None
    if "mamba_ssm" in args.impls:
        fn, info = load_mamba_ssm(args.mamba_src)
        impls["mamba_ssm"] = fn
        if fn is None:
            notes["mamba_ssm"] = info
        else:
            mamba_version = info
    results: dict[str, dict] = {}
    for name in args.impls.split(","):
        fn = impls.get(name)
        if fn is None:
            results[name] = {"skipped": notes.get(name, "unknown impl")}
            continue
        # triton-dcb-split: the backward's dCB kernel with a group's heads split over four programs per tile
        with settings([(triton_ssd, "DCB_HEAD_SPLIT", 4 if name == "triton-dcb-split" else head_split),
                       (triton_ssd, "DCB_ONE_P", one_p and name != "triton-dcb-pblocks")]):
            results[name] = bench(fn, t, args.chunk, warmup, reps)
        empty_cache(device)
    if args.dcb_sweep:
        spec = "4x1,4x2,8x2" if args.smoke else args.dcb_sweep
        results["dcb_sweep"] = dcb_sweep(spec, t, args.chunk, warmup, reps)
    import triton

    report = {
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "none (CPU smoke run, Triton interpreted)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "mamba_ssm": mamba_version,
        "python": platform.python_version(),
        "shape": {"batch": batch, "seqlen": args.seqlen, "nheads": args.nheads, "headdim": args.headdim,
                  "dstate": args.dstate, "ngroups": 1, "chunk": args.chunk, "dtype": args.dtype},
        "results": results,
    }
    ours, theirs = results.get("triton", {}), results.get("mamba_ssm", {})
    if "fwd_bwd_ms" in ours and "fwd_bwd_ms" in theirs:
        report["triton_over_mamba_ssm"] = {
            "fwd": round(ours["fwd_ms"] / theirs["fwd_ms"], 3),
            "fwd_bwd": round(ours["fwd_bwd_ms"] / theirs["fwd_bwd_ms"], 3),
        }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
