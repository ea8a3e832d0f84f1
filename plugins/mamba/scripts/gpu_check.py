"""Check the Triton Mamba-2 kernels against the PyTorch ops on a CUDA GPU at real shapes.

For each case (AiM-B and AiM-L layer shapes, plus multi-chunk and ragged lengths with
initial and final states) and each dtype, runs the chunked scan both ways on the same
inputs and compares the output, the final states and every gradient (x, dt, A, B, C,
D, z, dt_bias, initial_states); then the fused decode step. Error = max |a - b| /
max |b|; tolerance 1e-4 in fp32, 2e-2 in bf16. Prints a table and writes JSON.

    python plugins/mamba/scripts/gpu_check.py --out gpu_check.json [--quick]

Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

try:
    import avgkit_mamba  # noqa: F401
except ImportError:  # running from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avgkit_mamba.ops.dispatch import fused_step, fused_step_torch  # noqa: E402
from avgkit_mamba.ops.ssd_torch import ssd_chunk_scan  # noqa: E402

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}
GRADS = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"]


@dataclass
class Case:
    name: str
    batch: int
    seqlen: int
    nheads: int
    headdim: int = 64
    dstate: int = 128
    ngroups: int = 1
    chunk: int = 256
    z: bool = False
    init: bool = False
    final: bool = False


def cases(quick: bool) -> list[Case]:
    b = 2 if quick else 8
    out = [
        Case("AiM-B layer (d 768)", b, 256, 24),
        Case("AiM-L layer (d 1024)", b, 256, 32),
        Case("AiM-B, 4 chunks, init+final, z", max(1, b // 2), 1024, 24, z=True, init=True, final=True),
        Case("AiM-B, ragged 257, groups 2", max(1, b // 2), 257, 24, ngroups=2, final=True),
    ]
    return out[:2] + out[2:3] if quick else out


def make_inputs(c: Case, dtype: torch.dtype, seed: int = 0) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    h = c.nheads
    return {
        "x": r(c.batch, c.seqlen, h, c.headdim).to(dtype),
        "dt": (r(c.batch, c.seqlen, h) * 0.5 - 2.0).to(dtype),
        "A": -torch.exp(torch.rand(h, generator=g, device="cuda") * 2.77),  # A in [-16, -1] like A_init_range
        "B": r(c.batch, c.seqlen, c.ngroups, c.dstate).to(dtype),
        "C": r(c.batch, c.seqlen, c.ngroups, c.dstate).to(dtype),
        "D": torch.ones(h, device="cuda") + 0.1 * r(h),
        "z": r(c.batch, c.seqlen, h, c.headdim).to(dtype) if c.z else None,
        "dt_bias": torch.log(torch.expm1(torch.exp(torch.rand(h, generator=g, device="cuda") * 4.6 - 6.9))),
        "initial_states": r(c.batch, h, c.headdim, c.dstate) if c.init else None,
    }


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def run_scan(c: Case, t: dict, impl: str) -> tuple[dict, float]:
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in t.items()}
    torch.cuda.synchronize()
    start = time.perf_counter()
    kwargs = dict(chunk_size=c.chunk, D=leaves["D"], z=leaves["z"], dt_bias=leaves["dt_bias"], dt_softplus=True,
                  initial_states=leaves["initial_states"], return_final_states=c.final)
    if impl == "triton":
        from avgkit_mamba.ops.triton_ssd import chunk_scan_triton

        out = chunk_scan_triton(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], **kwargs)
    else:
        out = ssd_chunk_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], **kwargs)
    y, fs = out if c.final else (out, None)
    g = torch.Generator(device="cuda").manual_seed(1)
    loss = (y.float() * torch.randn(y.shape, generator=g, device="cuda")).sum()
    if fs is not None:
        loss = loss + (fs.float() * torch.randn(fs.shape, generator=g, device="cuda")).sum()
    loss.backward()
    torch.cuda.synchronize()
    res = {"y": y.detach(), "final_states": None if fs is None else fs.detach()}
    res.update({f"d{k}": leaves[k].grad for k in GRADS if leaves[k] is not None})
    return res, time.perf_counter() - start


def check_scan(c: Case, dtype: torch.dtype) -> list[dict]:
    t = make_inputs(c, dtype)
    ours, t_ours = run_scan(c, t, "triton")
    ref, _ = run_scan(c, t, "torch")
    rows = []
    for key, want in ref.items():
        if want is None:
            continue
        got = ours.get(key)
        err = float("inf") if got is None else rel_err(got, want)
        rows.append({"case": c.name, "dtype": str(dtype).removeprefix("torch."), "tensor": key, "rel_err": err,
                     "tol": TOL[dtype], "ok": err <= TOL[dtype], "first_call_s": round(t_ours, 2)})
    return rows


def check_step(batch: int, nheads: int, dtype: torch.dtype) -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    p, n, ngroups, w = 64, 128, 1, 4
    conv_dim = nheads * p + 2 * ngroups * n
    weight, bias = r(conv_dim, w) * 0.5, r(conv_dim) * 0.1
    A = -torch.exp(torch.rand(nheads, generator=g, device="cuda") * 2.77)
    D, dt_bias = torch.ones(nheads, device="cuda"), r(nheads) * 0.5 - 3
    conv, ssm = r(batch, conv_dim, w).to(dtype), r(batch, nheads, p, n)
    conv_ref, ssm_ref = conv.clone(), ssm.clone()
    rows = []
    for i in range(3):
        xbc, dt, z = r(batch, conv_dim).to(dtype), r(batch, nheads).to(dtype), r(batch, nheads * p).to(dtype)
        y = fused_step(xbc, dt, conv, weight, bias, ssm, A, D, dt_bias, z, p, ngroups, impl="triton")
        y_ref = fused_step_torch(xbc, dt, conv_ref, weight, bias, ssm_ref, A, D, dt_bias, z, p, ngroups)
        for key, got, want in (("y", y, y_ref), ("conv_state", conv, conv_ref), ("ssm_state", ssm, ssm_ref)):
            err = rel_err(got, want)
            # the kernel keeps the conv output in fp32; the reference rounds it to dtype first
            tol = 1e-5 if key == "conv_state" else TOL[dtype]
            rows.append({"case": f"decode step b{batch} h{nheads} #{i}", "dtype": str(dtype).removeprefix("torch."),
                         "tensor": key, "rel_err": err, "tol": tol, "ok": err <= tol, "first_call_s": None})
    return rows


def time_step(batch: int, nheads: int, dtype: torch.dtype, reps: int = 50, ssm_dtype: torch.dtype = torch.float32
              ) -> dict:
    """Median milliseconds of one fused decode step (AiM-B layer: p 64, n 128)."""
    p, n, w = 64, 128, 4
    conv_dim = nheads * p + 2 * n
    dev = "cuda"
    xbc, dt, z = (torch.randn(batch, conv_dim, device=dev, dtype=dtype), torch.randn(batch, nheads, device=dev, dtype=dtype),
                  torch.randn(batch, nheads * p, device=dev, dtype=dtype))
    conv = torch.zeros(batch, conv_dim, w, device=dev, dtype=dtype)
    ssm = torch.zeros(batch, nheads, p, n, device=dev, dtype=ssm_dtype)
    weight, bias = torch.randn(conv_dim, w, device=dev), torch.randn(conv_dim, device=dev)
    A, D, dt_bias = -torch.ones(nheads, device=dev), torch.ones(nheads, device=dev), torch.zeros(nheads, device=dev)
    out = {}
    for impl in ("triton", "torch"):
        def call(impl: str = impl) -> None:
            fused_step(xbc, dt, conv, weight, bias, ssm, A, D, dt_bias, z, p, 1, impl=impl)
        for _ in range(3):
            call()
        times = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            call()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        out[f"{impl}_ms"] = round(sorted(times)[len(times) // 2], 4)
    state_bytes = ssm.numel() * ssm.element_size() * 2 + conv.numel() * conv.element_size() * 2
    out["state_read_write_GB_s_triton"] = round(state_bytes / out["triton_ms"] / 1e6, 1)
    return {"batch": batch, "nheads": nheads, "dtype": str(dtype).removeprefix("torch."),
            "ssm_dtype": str(ssm_dtype).removeprefix("torch."), **out}


def check_mixer(dtype: torch.dtype) -> list[dict]:
    """Mamba2Mixer(768) on the GPU: triton vs torch forward/backward, then prefill + steps vs forward."""
    from avgkit_mamba.mixer import Mamba2Mixer

    torch.manual_seed(0)
    m = Mamba2Mixer(768, impl="triton").cuda()
    x = torch.randn(4, 64, 768, device="cuda")
    rows = []
    outs = {}
    for impl in ("triton", "torch"):
        m.impl = impl
        m.zero_grad()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            y = m(x)
        y.float().square().mean().backward()
        outs[impl] = (y.detach().float(), {k: p.grad.detach().clone() for k, p in m.named_parameters()})
    (y1, g1), (y2, g2) = outs["triton"], outs["torch"]
    pairs = [("y", y1, y2)] + [(f"d {k}", g1[k], g2[k]) for k in g2]
    m.impl = "triton"
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        state = m.allocate_state(4, device="cuda")
        parts = [m(x[:, :40], state)] + [m.step(x[:, t], state)[:, None] for t in range(40, 64)]
    pairs.append(("prefill+steps vs forward", torch.cat(parts, 1).float(), y1))
    for key, got, want in pairs:
        err = rel_err(got, want)
        tol = TOL[dtype] * (3 if key.startswith("d ") and dtype != torch.float32 else 1)
        rows.append({"case": "Mamba2Mixer(768) b4 l64", "dtype": str(dtype).removeprefix("torch."), "tensor": key,
                     "rel_err": err, "tol": tol, "ok": err <= tol, "first_call_s": None})
    return rows


def check_backbone_decode(dtype: torch.dtype, steps: int = 48) -> list[dict]:
    """A 4-layer d768 AiM (adaLN-group 2) decoding with the fused Triton path vs the PyTorch ops."""
    from avgkit.plugins import get_registry

    reg = get_registry()
    spec, cspec = reg.get("backbone", "mamba2"), reg.get("conditioner", "adaln-group")
    torch.manual_seed(0)
    bb = spec.factory(spec.resolve("aim-b", {"n_layer": 4, "vocab_size": 16384, "num_tokens": steps + 1}))
    cond_mod = cspec.factory(cspec.resolve(None, {"num_classes": 1000, "groups": 2}), dim=bb.dim, num_layers=4)
    with torch.no_grad():
        for prm in cond_mod.parameters():
            prm.add_(torch.randn_like(prm) * 0.02)
    bb, cond_mod = bb.cuda().to(dtype).eval(), cond_mod.cuda().to(dtype).eval()
    labels = torch.arange(32, device="cuda")
    codes = torch.randint(0, 16384, (32, steps + 1), device="cuda")
    logits = {}
    with torch.no_grad():
        cond = cond_mod(labels)
        for impl in ("triton", "torch"):
            for blk in bb.layers:
                blk.mixer.impl = impl
            state = bb.init_state(32)
            out = [bb.prefill(state, cond)] + [bb.step(state, codes[:, k], cond) for k in range(steps)]
            logits[impl] = torch.stack(out, 1).float()
    err = rel_err(logits["triton"], logits["torch"])
    agree = (logits["triton"].argmax(-1) == logits["torch"].argmax(-1)).float().mean().item()
    tol = 3 * TOL[dtype]
    case = "AiM d768x4 decode, 48 steps"
    d = str(dtype).removeprefix("torch.")
    return [{"case": case, "dtype": d, "tensor": "logits", "rel_err": err, "tol": tol, "ok": err <= tol,
             "first_call_s": None},
            {"case": case, "dtype": d, "tensor": "1 - top1 agree", "rel_err": 1 - agree, "tol": 0.01,
             "ok": 1 - agree <= 0.01, "first_call_s": None}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON report path")
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer cases")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated torch dtypes")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # an exact fp32 reference
    torch.backends.cudnn.allow_tf32 = False
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    rows: list[dict] = []
    for dtype in dtypes:
        for c in cases(args.quick):
            t0 = time.perf_counter()
            rows += check_scan(c, dtype)
            print(f"checked {c.name} {dtype} in {time.perf_counter() - t0:.1f} s", flush=True)
            torch.cuda.empty_cache()
        rows += check_step(16 if args.quick else 128, 24, dtype)
        rows += check_mixer(dtype)
        rows += check_backbone_decode(dtype)
    print(f"{'case':<36} {'dtype':<9} {'tensor':<16} {'rel err':>9} {'tol':>7}  ok")
    for r in rows:
        print(f"{r['case']:<36} {r['dtype']:<9} {r['tensor']:<16} {r['rel_err']:>9.2e} {r['tol']:>7.0e}  "
              f"{'yes' if r['ok'] else 'NO'}")
    import triton

    step_timing = [time_step(128, 24, d) for d in dtypes] + [time_step(b, 24, torch.bfloat16, ssm_dtype=torch.bfloat16)
                                                             for b in (32, 128, 512)]
    for s in step_timing:
        print(f"decode step {s}")
    report = {
        "step_timing": step_timing,
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "all_ok": all(r["ok"] for r in rows),
        "checks": rows,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{sum(r['ok'] for r in rows)}/{len(rows)} checks passed; wrote {args.out}")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
