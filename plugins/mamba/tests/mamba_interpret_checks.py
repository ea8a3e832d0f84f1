"""Triton kernels on the CPU interpreter, against the torch ops and the goldens.

Run as ``python mamba_interpret_checks.py {scan,step,decode,compile,int8,fused,poison,conv,core,inproj}``: it sets ``TRITON_INTERPRET=1``
before Triton is imported (which is why the tests run it in a subprocess), prints one
line per check and exits non-zero on the first mismatch. Shapes are tiny: the
interpreter runs each program in Python.
"""

from __future__ import annotations

import contextlib
import os
import sys
from functools import partial

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from avgkit_mamba.ops.dispatch import chunk_scan, fused_step, fused_step_torch  # noqa: E402
from avgkit_mamba.ops.ssd_torch import ssd_chunk_scan  # noqa: E402
from avgkit_mamba.ops.triton_common import _dequantize_rows, _quantize_rows  # noqa: E402
from mamba_testutil import GOLDEN_DIR, max_rel_err, ssd_problem  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch import Tensor  # noqa: E402

GRAD_NAMES = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"]


def check(name: str, err: float, tol: float) -> None:
    print(f"{name:<40} max rel err {err:.2e} (tol {tol:.0e})", flush=True)
    if not err <= tol:  # also catches NaN
        raise SystemExit(f"FAILED: {name}: {err:.3e} > {tol:.0e}")


def layer_params(h: int, p: int, g: int, n: int, r, gen: torch.Generator, w: int = 4) -> tuple:
    """One mixer's random decode-step parameters: d_inner, conv_dim, conv weight and bias, A_log, D, dt_bias, norm."""
    d_inner, conv_dim = h * p, h * p + 2 * g * n
    return (d_inner, conv_dim, r(conv_dim, w), r(conv_dim), torch.rand(h, generator=gen), r(h), r(h) * 0.5,
            1 + 0.1 * r(d_inner))


def random_state(b: int, h: int, p: int, n: int, dtype: torch.dtype, r) -> tuple[Tensor, Tensor | None]:
    """A random SSM state in ``dtype`` and, for int8, its row scales."""
    from avgkit_mamba.ops.state_quant import quantize_rows_

    if dtype != torch.int8:
        return r(b, h, p, n).to(dtype), None
    ssm, scale = torch.zeros(b, h, p, n, dtype=torch.int8), torch.zeros(b, h, p)
    quantize_rows_(r(b, h, p, n), ssm, scale)
    return ssm, scale


def decode_logits_by_impl(bb, cond, codes: Tensor) -> dict[str, Tensor]:
    """Prefill + a step per later code, once with every mixer on Triton and once on torch: (B, T, V) each."""
    logits = {}
    for impl in ("triton", "torch"):
        for blk in bb.layers:
            blk.mixer.impl = impl
        state = bb.init_state(codes.shape[0])
        out = [bb.prefill(state, cond)] + [bb.step(state, codes[:, k], cond) for k in range(codes.shape[1] - 1)]
        logits[impl] = torch.stack(out, 1)
    return logits


def run_scan(fn, t: dict, chunk: int, final: bool, **kw) -> tuple[Tensor, Tensor | None, dict]:
    """y, final states and the leaves (with their .grad) after a fixed random loss."""
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in t.items()}
    out = fn(
        leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], chunk_size=chunk, D=leaves["D"],
        z=leaves["z"], dt_bias=leaves["dt_bias"], dt_softplus=True, initial_states=leaves["initial_states"],
        return_final_states=final, **kw,
    )
    y, fs = out if final else (out, None)
    gen = torch.Generator().manual_seed(1)
    loss = (y.float() * torch.randn(y.shape, generator=gen)).sum()
    if fs is not None:
        loss = loss + (fs * torch.randn(fs.shape, generator=gen)).sum()
    loss.backward()
    return y, fs, leaves


def compare_runs(label: str, run1: tuple, run2: tuple, tol: float) -> None:
    """Forward, final states and every gradient of two run_scan results."""
    (y1, f1, g1), (y2, f2, g2) = run1, run2
    check(f"{label} y", max_rel_err(y1, y2), tol)
    if f2 is not None:
        check(f"{label} final_states", max_rel_err(f1, f2), tol)
    for k in GRAD_NAMES:
        if g2[k] is not None:
            if g1[k].grad is None:
                raise SystemExit(f"FAILED: {label} d{k} missing")
            check(f"{label} d{k}", max_rel_err(g1[k].grad, g2[k].grad), tol)


def compare_scan(label: str, t: dict, chunk: int, final: bool, tol: float) -> None:
    """Forward, final states and every gradient: Triton vs torch on the same leaves."""
    compare_runs(label, run_scan(chunk_scan, t, chunk, final, impl="triton"),
                 run_scan(ssd_chunk_scan, t, chunk, final), tol)


def scan_checks() -> None:
    # several chunks, a partial last chunk, groups, initial + final states, D, z
    t = ssd_problem(2, 20, 2, 8, 1, 16, with_z=True, with_init=True)
    compare_scan("fp32 l=20 chunk=8 init+z", t, chunk=8, final=True, tol=1e-4)
    # one chunk, no states: the path a training step takes
    t = ssd_problem(2, 13, 4, 8, 2, 16, seed=3)
    compare_scan("fp32 l=13 chunk=16 groups", t, chunk=16, final=False, tol=1e-4)
    t = ssd_problem(1, 16, 2, 16, 1, 16, dtype=torch.float16, seed=4)
    compare_scan("fp16 l=16 chunk=16", t, chunk=16, final=False, tol=2e-2)
    # five heads in one group, the dCB kernel's heads split over programs: uneven parts (2 + 2 + 1)
    from avgkit_mamba.ops import triton_ssd

    t = ssd_problem(2, 20, 5, 8, 1, 16, seed=5)
    split, triton_ssd.DCB_HEAD_SPLIT = triton_ssd.DCB_HEAD_SPLIT, 4
    try:
        compare_scan("fp32 l=20 chunk=8 five heads, dCB split", t, chunk=8, final=False, tol=1e-4)
    finally:
        triton_ssd.DCB_HEAD_SPLIT = split
    # P wider than the interpreter's block: the dCB kernel's P loop inside the head loop (not DCB_ONE_P)
    t = ssd_problem(1, 16, 2, 32, 1, 16, seed=6)
    one_p, triton_ssd.DCB_ONE_P = triton_ssd.DCB_ONE_P, False
    try:
        compare_scan("fp32 p=32 dCB by P blocks", t, chunk=16, final=False, tol=1e-4)
    finally:
        triton_ssd.DCB_ONE_P = one_p
    compare_scan("fp32 p=32 dCB one P block", t, chunk=16, final=False, tol=1e-4)

    g = load_file(str(GOLDEN_DIR / "ssd_combined.safetensors"))
    y = chunk_scan(g["x"], g["dt"], g["A"], g["B"], g["C"], chunk_size=int(g["chunk_size"]), D=g["D"], z=g["z"],
                   dt_bias=g["dt_bias"], dt_softplus=True, impl="triton")
    check("golden chunk_scan_combined_ref", max_rel_err(y, g["y"]), 1e-5)
    g = load_file(str(GOLDEN_DIR / "ssd_minimal.safetensors"))
    y, fs = chunk_scan(g["x"], g["dt"], g["A"], g["B"], g["C"], chunk_size=int(g["chunk_size"]),
                       initial_states=g["initial_states"], return_final_states=True, impl="triton")
    check("golden ssd_minimal_discrete y", max_rel_err(y, g["y"]), 1e-5)
    check("golden ssd_minimal_discrete final", max_rel_err(fs, g["final_states"]), 1e-5)


def step_checks() -> None:
    gen = torch.Generator().manual_seed(0)
    b, h, p, g, n, w = 2, 4, 8, 2, 16, 4
    conv_dim = h * p + 2 * g * n
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    weight, bias = r(conv_dim, w), r(conv_dim)
    A, D, dt_bias = -torch.rand(h, generator=gen) * 3, r(h), r(h) * 0.5
    for label, state_dtype, gate in (("fp32 state, gated", torch.float32, True), ("fp16 conv state", torch.float16, False)):
        conv = r(b, conv_dim, w).to(state_dtype)
        ssm = r(b, h, p, n)
        conv_ref, ssm_ref = conv.clone(), ssm.clone()
        for i in range(2):
            xbc, dt = r(b, conv_dim), r(b, h) - 1.0
            z = r(b, h * p) if gate else None
            y = fused_step(xbc, dt, conv, weight, bias, ssm, A, D, dt_bias, z, p, g, impl="triton")
            y_ref = fused_step_torch(xbc, dt, conv_ref, weight, bias, ssm_ref, A, D, dt_bias, z, p, g)
            check(f"step {label} #{i} y", max_rel_err(y, y_ref), 1e-5)
            check(f"step {label} #{i} conv state", max_rel_err(conv.float(), conv_ref.float()), 1e-6)
            check(f"step {label} #{i} ssm state", max_rel_err(ssm, ssm_ref), 1e-5)


@triton.jit
def _quantize_tile_kernel(v_ptr, q_ptr, scale_ptr, back_ptr, P: tl.constexpr, N: tl.constexpr):
    """One (P, N) tile through ``_quantize_rows`` and back through ``_dequantize_rows``."""
    at = tl.arange(0, P)[:, None] * N + tl.arange(0, N)[None, :]
    q, scale = _quantize_rows(tl.load(v_ptr + at))
    tl.store(q_ptr + at, q)
    tl.store(scale_ptr + tl.arange(0, P), scale)
    tl.store(back_ptr + at, _dequantize_rows(q, scale))


def quantize_tile_checks() -> None:
    """The kernels' quantiser alone gives state_quant's bytes and scales, bit for bit: rows of every magnitude,
    exact ties (rounded half to even), a zero row and rows too small to scale (stored as zeros)."""
    from avgkit_mamba.ops.state_quant import dequantize_rows, quantize_rows_

    gen = torch.Generator().manual_seed(0)
    v = torch.randn(8, 16, generator=gen) * torch.logspace(-3, 2, 8)[:, None]
    v[0] = torch.linspace(-127, 127, 16).round() + 0.5  # ties after scaling by 127 / 127.5
    v[0, 0] = 127.5
    v[1] = 0.0
    v[2] = torch.randn(16, generator=gen) * 1e-38
    v[3, :3] = torch.tensor([2e-30, -1e-30, 0.5e-30])
    q, scale, back = torch.empty(8, 16, dtype=torch.int8), torch.empty(8), torch.empty(8, 16)
    _quantize_tile_kernel[(1,)](v, q, scale, back, P=8, N=16)
    q_ref, scale_ref = torch.empty_like(q), torch.empty_like(scale)
    quantize_rows_(v, q_ref, scale_ref)
    check("quantiser: int8 values differing", (q != q_ref).float().mean().item(), 0.0)
    check("quantiser: scales", max_rel_err(scale, scale_ref), 0.0)
    check("quantiser: dequantised", max_rel_err(back, dequantize_rows(q_ref, scale_ref)), 0.0)
    if q.min() < -127 or not q[1:3].eq(0).all():
        raise SystemExit("FAILED: quantiser: -128 stored, or a zero / too-small row not stored as zeros")


def int8_state_checks() -> None:
    """The one-byte state: the Triton step quantises like the torch reference, to one quantum."""
    quantize_tile_checks()
    from avgkit_mamba.ops.state_quant import dequantize_rows, quantize_rows_
    from avgkit_mamba.ops.triton_step import decode_step_triton

    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    # n = 24: a masked d_state tail (BLOCK_N 32) must not enter the row maximum; each case with the state read
    # bytewise and as words (StepTile.words)
    from avgkit_mamba.ops import triton_step

    for b, h, p, g, n, words in ((2, 4, 8, 2, 16, False), (1, 2, 8, 1, 24, False), (2, 4, 8, 2, 16, True),
                                 (1, 2, 8, 1, 24, True)):
        w = 4
        conv_dim = h * p + 2 * g * n
        weight, bias = r(conv_dim, w), r(conv_dim)
        A, D, dt_bias = -torch.rand(h, generator=gen) * 3, r(h), r(h) * 0.5
        conv = r(b, conv_dim, w)
        q, scale = torch.zeros(b, h, p, n, dtype=torch.int8), torch.zeros(b, h, p)
        quantize_rows_(r(b, h, p, n), q, scale)
        q[0, 0, 0] = 0  # an all-zero row: scale 0, stays finite
        scale[0, 0, 0] = 0
        scale[0, 0, 1] = 1e-25  # a row below the words path's smallest scale
        conv_ref, q_ref, scale_ref = conv.clone(), q.clone(), scale.clone()
        for i in range(3):
            xbc, dt, z = r(b, conv_dim), r(b, h) - 1.0, r(b, h * p)
            with triton_step.split_rule(lambda rows, hd, quant, words=words: triton_step._tile(rows, hd, quant)._replace(
                    words=words)):
                y = fused_step(xbc, dt, conv, weight, bias, q, A, D, dt_bias, z, p, g, impl="triton",
                               state_scale=scale)
            y_ref = fused_step_torch(xbc, dt, conv_ref, weight, bias, q_ref, A, D, dt_bias, z, p, g,
                                     state_scale=scale_ref)
            label = f"int8 step h{h} n{n}{' words' if words else ''} #{i}"
            check(f"{label} y", max_rel_err(y, y_ref), 1e-4)
            check(f"{label} scales", max_rel_err(scale, scale_ref), 1e-5)
            check(f"{label} state (one quantum = 8e-3)", max_rel_err(dequantize_rows(q, scale),
                                                                    dequantize_rows(q_ref, scale_ref)), 8e-3)
            check(f"{label} int8 values differing", (q != q_ref).float().mean().item(), 1e-2)
            if q.abs().max() != 127:
                raise SystemExit(f"FAILED: {label}: the row maximum must be stored as 127")

    # the whole mixer step (in_proj output in place, A_log, norm) and a backbone: triton vs torch
    from avgkit.plugins import get_registry

    b, h, p, g, n, w = 2, 4, 8, 2, 16, 4
    d_inner, conv_dim, weight, bias, A_log, D, dt_bias, nw = layer_params(h, p, g, n, r, gen, w)
    conv = r(b, conv_dim, w)
    q, scale = random_state(b, h, p, n, torch.int8, r)
    q_ref, scale_ref, conv_ref = q.clone(), scale.clone(), conv.clone()
    zxbcdt = r(b, d_inner + conv_dim + h)
    out = decode_step_triton(zxbcdt, conv, weight, bias, q, A_log, D, dt_bias, nw, 1e-5, p, g, state_scale=scale)
    z, xbc, dt = zxbcdt.split([d_inner, conv_dim, h], dim=-1)
    from avgkit_mamba.norm import GatedRMSNorm

    norm = GatedRMSNorm(d_inner, group_size=d_inner // g)
    with torch.no_grad():
        norm.weight.copy_(nw)
        y_ref = fused_step_torch(xbc, dt, conv_ref, weight, bias, q_ref, -torch.exp(A_log), D, dt_bias, z, p, g,
                                 state_scale=scale_ref)
        check("int8 decode step normed y", max_rel_err(out, norm(y_ref)), 1e-4)
    check("int8 decode step state", max_rel_err(dequantize_rows(q, scale), dequantize_rows(q_ref, scale_ref)), 8e-3)

    reg = get_registry()
    spec, cspec = reg.get("backbone", "mamba2"), reg.get("conditioner", "adaln-group")
    torch.manual_seed(0)
    bb = spec.factory(spec.resolve("tiny", {"vocab_size": 32, "num_tokens": 6, "impl": "triton",
                                            "state_dtype": "int8"})).eval()
    cond_mod = cspec.factory(cspec.resolve(None, {"num_classes": 10, "groups": 2}), dim=bb.dim,
                             num_layers=bb.num_layers).eval()
    with torch.no_grad():
        for prm in cond_mod.parameters():
            prm.add_(torch.randn_like(prm) * 0.05)
        cond = cond_mod(torch.tensor([1, 7]))
        codes = torch.randint(0, 32, (2, 6), generator=gen)
        state = bb.init_state(2)
        if state.layers[0].ssm.dtype != torch.int8 or state.layers[0].scale is None:
            raise SystemExit("FAILED: state_dtype int8 did not allocate an int8 state with scales")
        logits = decode_logits_by_impl(bb, cond, codes)
        check("int8 backbone decode logits triton vs torch", max_rel_err(logits["triton"], logits["torch"]), 1e-4)
        check("int8 backbone decode vs teacher forcing", max_rel_err(logits["triton"], bb(codes, cond)), 2e-3)


def fused_checks() -> None:
    """The one-launch decode step (split tiles, next load in flight, last program of a group normalises)."""
    from avgkit_mamba.ops.dispatch import decode_step_torch
    from avgkit_mamba.ops.state_quant import dequantize_rows
    from avgkit_mamba.ops.triton_step_fused import _COUNTERS, decode_step_fused_triton

    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    # (b, h, p, g, n, block_p, tiles, state): two tiles per program with a ragged tail (p 24 = 8 + 8 + 8 over
    # chunks of 16), groups, one-byte state
    cases = ((2, 4, 8, 2, 16, 8, 1, torch.float32), (1, 2, 24, 1, 16, 8, 2, torch.float32),
             (2, 4, 16, 2, 16, 4, 2, torch.int8), (1, 2, 8, 1, 24, 8, 1, torch.float16))
    for b, h, p, g, n, block_p, tiles, sdt in cases:
        w = 4
        d_inner, conv_dim, weight, bias, A_log, D, dt_bias, nw = layer_params(h, p, g, n, r, gen, w)
        conv = r(b, conv_dim, w)
        ssm, scale = random_state(b, h, p, n, sdt, r)
        conv_ref, ssm_ref = conv.clone(), ssm.clone()
        scale_ref = None if scale is None else scale.clone()
        label = f"one-launch b{b} h{h} p{p} g{g} n{n} tile {block_p}x{tiles} {str(sdt)[6:]}"
        for i in range(2):
            zxbcdt = r(b, d_inner + conv_dim + h)
            out = decode_step_fused_triton(zxbcdt, conv, weight, bias, ssm, A_log, D, dt_bias, nw, 1e-5, p, g,
                                           state_scale=scale, block_p=block_p, tiles=tiles)
            ref = decode_step_torch(zxbcdt, conv_ref, weight, bias, ssm_ref, A_log, D, dt_bias, nw, 1e-5, p, g,
                                    state_scale=scale_ref)
            check(f"{label} #{i} y", max_rel_err(out, ref), 1e-4 if sdt == torch.int8 else 1e-5)
            check(f"{label} #{i} conv state", max_rel_err(conv, conv_ref), 1e-6)
            got = ssm.float() if scale is None else dequantize_rows(ssm, scale)
            want = ssm_ref.float() if scale is None else dequantize_rows(ssm_ref, scale_ref)
            check(f"{label} #{i} ssm state", max_rel_err(got, want), 8e-3 if sdt == torch.int8 else 1e-3
                  if sdt == torch.float16 else 1e-5)
        if any(int(c.abs().sum()) for c in _COUNTERS.values()):
            raise SystemExit("FAILED: the arrival counters were not reset to zero")

    # a backbone decoding with step_kernel one-launch == the torch path
    for state_dtype in ("fp32", "int8"):
        check_backbone_kernel("one-launch", state_dtype, gen, ngroups=2)


def check_backbone_kernel(step_kernel: str, state_dtype: str, gen: torch.Generator, ngroups: int = 1) -> int:
    """A tiny backbone decoding 4 tokens with ``step_kernel`` on the Triton path = the torch path; returns the
    number of decode steps its layers took, the class token's prefill (one step) included (for callers counting
    launches)."""
    from avgkit.plugins import get_registry

    reg = get_registry()
    spec, cspec = reg.get("backbone", "mamba2"), reg.get("conditioner", "adaln-group")
    torch.manual_seed(0)
    bb = spec.factory(spec.resolve("tiny", {"vocab_size": 32, "num_tokens": 5, "impl": "triton", "ngroups": ngroups,
                                            "step_kernel": step_kernel, "state_dtype": state_dtype})).eval()
    cond_mod = cspec.factory(cspec.resolve(None, {"num_classes": 10, "groups": 2}), dim=bb.dim,
                             num_layers=bb.num_layers).eval()
    with torch.no_grad():
        for prm in cond_mod.parameters():  # a modulation, gate included, that is not the zero init
            prm.copy_(0.3 * torch.randn(prm.shape, generator=gen))
        cond = cond_mod(torch.tensor([1, 7]))
        codes = torch.randint(0, 32, (2, 5), generator=gen)
        logits = decode_logits_by_impl(bb, cond, codes)
    check(f"{step_kernel} backbone {state_dtype} triton vs torch", max_rel_err(logits["triton"], logits["torch"]),
          1e-4 if state_dtype == "int8" else 1e-5)
    return bb.num_layers * codes.shape[1]


def decode_checks() -> None:
    """The sampler's fused path: mixer step (in_proj output in place, A_log, norm) and block boundary."""
    from avgkit_mamba.norm import GatedRMSNorm
    from avgkit_mamba.ops.triton_norm import add_norm_modulate_triton
    from avgkit_mamba.ops.triton_step import decode_step_triton

    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    b, h, p, g, n, w = 3, 4, 8, 2, 16, 4
    d_inner, conv_dim = h * p, h * p + 2 * g * n
    weight, bias = r(conv_dim, w), r(conv_dim)
    A_log, D, dt_bias = torch.rand(h, generator=gen), r(h), r(h) * 0.5
    norm = GatedRMSNorm(d_inner, group_size=d_inner // g)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * r(d_inner))
    conv, ssm = r(b, conv_dim, w), r(b, h, p, n)
    conv_ref, ssm_ref = conv.clone(), ssm.clone()
    for i in range(2):
        zxbcdt = r(b, d_inner + conv_dim + h)
        out = decode_step_triton(zxbcdt, conv, weight, bias, ssm, A_log, D, dt_bias, norm.weight, norm.eps, p, g)
        z, xbc, dt = zxbcdt.split([d_inner, conv_dim, h], dim=-1)
        y_ref = fused_step_torch(xbc, dt, conv_ref, weight, bias, ssm_ref, -torch.exp(A_log), D, dt_bias, z, p, g)
        check(f"decode step #{i} normed y", max_rel_err(out, norm(y_ref)), 1e-5)
        check(f"decode step #{i} conv state", max_rel_err(conv, conv_ref), 1e-6)
        check(f"decode step #{i} ssm state", max_rel_err(ssm, ssm_ref), 1e-5)

    # every work split of the state-update kernel gives the same bits (bf16 and int8 states, 8 heads in 2 groups):
    # heads a program (and the loop over them pipelined), streaming cache hints, head-dim blocks
    from avgkit_mamba.ops import triton_step
    from avgkit_mamba.ops.state_quant import quantize_rows_

    h8 = 8
    d8, cd8 = h8 * p, h8 * p + 2 * g * n
    w8, b8, al8, D8, dtb8 = r(cd8, w), r(cd8), torch.rand(h8, generator=gen), r(h8), r(h8) * 0.5
    nw8 = 1 + 0.1 * r(d8)
    z8 = [r(b, d8 + cd8 + h8) for _ in range(2)]
    for sdt, words in ((torch.bfloat16, False), (torch.int8, False), (torch.int8, True)):
        outs = []
        for tile in (triton_step.StepTile(8, 4), triton_step.StepTile(8, 4, 2, True), triton_step.StepTile(4, 2, 4),
                     triton_step.StepTile(8, 4, 4, True), triton_step.StepTile(8, 4, 3),  # 3: falls back to 1
                     triton_step.StepTile(8, 4, 2, True, 2), triton_step.StepTile(4, 2, 4, False, 3),
                     triton_step.StepTile(8, 4, 1, False, 1, True), triton_step.StepTile(4, 2, 2, True, 2, True)):
            tile = tile._replace(words=words)
            gen8 = torch.Generator().manual_seed(7)
            conv8, vals = torch.randn(b, cd8, w, generator=gen8), torch.randn(b, h8, p, n, generator=gen8)
            scale8 = None
            if sdt == torch.int8:
                ssm8, scale8 = torch.empty(vals.shape, dtype=torch.int8), torch.empty(vals.shape[:3])
                quantize_rows_(vals, ssm8, scale8)
            else:
                ssm8 = vals.to(sdt)
            with triton_step.split_rule(lambda rows, hd, quant, tile=tile: tile):
                ys = [decode_step_triton(zz, conv8, w8, b8, ssm8, al8, D8, dtb8, nw8, 1e-5, p, g, state_scale=scale8)
                      for zz in z8]
            outs.append([*ys, conv8, ssm8.float()] + ([scale8] if scale8 is not None else []))
        same = all(torch.equal(a, c) for o in outs[1:] for a, c in zip(o, outs[0], strict=True))
        check(f"decode step {str(sdt)[6:]}{' words' if words else ''} state: every work split the same bits",
              0.0 if same else float("inf"), 0.0)

    deferred_norm_checks()

    d = 24
    y, gate, res, wn = r(b, d), r(b, d), r(b, d), 1 + 0.1 * r(d)
    mod = r(b, 3, d)  # strided (shift, scale) views, as Conditioning.modulation gives them
    for label, kw in (("gate+residual+modulation", dict(gate=gate, residual=res, shift=mod[:, 0], scale=mod[:, 1])),
                      ("first block (no gate, no residual)", dict(gate=None, residual=None, shift=None, scale=None))):
        x, res_out = add_norm_modulate_triton(y, kw["gate"], kw["residual"], wn, kw["shift"], kw["scale"], 1e-5,
                                              torch.float32)
        h_ref = y * (kw["gate"] if kw["gate"] is not None else 1) + (kw["residual"] if kw["residual"] is not None else 0)
        x_ref = h_ref * torch.rsqrt(h_ref.square().mean(-1, keepdim=True) + 1e-5) * wn
        if kw["shift"] is not None:
            x_ref = x_ref * (1 + kw["scale"]) + kw["shift"]
        check(f"add+norm+modulate {label} residual", max_rel_err(res_out, h_ref), 1e-6)
        check(f"add+norm+modulate {label} x", max_rel_err(x, x_ref), 1e-5)

    # a whole backbone: triton and torch step paths give the same logits token by token
    from avgkit.plugins import get_registry

    reg = get_registry()
    spec, cspec = reg.get("backbone", "mamba2"), reg.get("conditioner", "adaln-group")
    torch.manual_seed(0)
    bb = spec.factory(spec.resolve("tiny", {"vocab_size": 32, "num_tokens": 6, "impl": "triton"})).eval()
    cond_mod = cspec.factory(cspec.resolve(None, {"num_classes": 10, "groups": 2}), dim=bb.dim,
                             num_layers=bb.num_layers).eval()
    with torch.no_grad():
        for prm in cond_mod.parameters():
            prm.add_(torch.randn_like(prm) * 0.05)
        labels = torch.tensor([1, 7])
        cond = cond_mod(labels)
        codes = torch.randint(0, 32, (2, 6), generator=gen)
        logits = {}
        for impl in ("triton", "torch"):
            for blk in bb.layers:
                blk.mixer.impl = impl
            state = bb.init_state(2)
            out = [bb.prefill(state, cond)]
            for k in range(5):
                out.append(bb.step(state, codes[:, k], cond))
            logits[impl] = torch.stack(out, 1)
        check("backbone decode logits triton vs torch", max_rel_err(logits["triton"], logits["torch"]), 1e-5)
        teacher = bb(codes, cond)
        check("backbone decode (triton) vs teacher forcing", max_rel_err(logits["triton"], teacher), 1e-4)

    # the dual (cache) form: Triton kernel vs its torch reference vs the recurrent state, two
    # groups (B written by each group's first head) and more tokens than one cache block
    opts = {"vocab_size": 32, "num_tokens": 12, "ngroups": 2, "impl": "triton", "decode_form": "dual"}
    torch.manual_seed(0)
    bb = spec.factory(spec.resolve("tiny", opts)).eval()
    with torch.no_grad():
        codes = torch.randint(0, 32, (2, 12), generator=gen)
        logits = {}
        for label, impl, form in (("triton dual", "triton", "dual"), ("torch dual", "torch", "dual"),
                                  ("torch recurrent", "torch", "recurrent")):
            bb.config = bb.config.model_copy(update={"decode_form": form})
            for blk in bb.layers:
                blk.mixer.impl = impl
            state = bb.init_state(2)
            out = [bb.prefill(state, cond)] + [bb.step(state, codes[:, k], cond) for k in range(11)]
            logits[label] = torch.stack(out, 1)
        check("dual decode triton vs torch", max_rel_err(logits["triton dual"], logits["torch dual"]), 1e-5)
        check("dual decode vs recurrent", max_rel_err(logits["triton dual"], logits["torch recurrent"]), 1e-5)
        check("dual decode vs teacher forcing", max_rel_err(logits["triton dual"], bb(codes, cond)), 1e-4)

    # the chunked form (window 4: 11 steps fold twice and leave a partial window), each state dtype: Triton
    # against its torch reference; fp32 against the recurrent state too
    with torch.no_grad():
        for state_dtype, tol in (("fp32", 1e-5), ("bf16", 1e-3), ("int8", 1e-3)):
            logits = {}
            for label, impl, form in (("triton", "triton", "chunked"), ("torch", "torch", "chunked"),
                                      ("recurrent", "torch", "recurrent")):
                bb.config = bb.config.model_copy(update={"decode_form": form, "decode_chunk": 4,
                                                         "state_dtype": state_dtype})
                for blk in bb.layers:
                    blk.mixer.impl = impl
                state = bb.init_state(2)
                out = [bb.prefill(state, cond)] + [bb.step(state, codes[:, k], cond) for k in range(11)]
                logits[label] = torch.stack(out, 1)
            check(f"chunked decode {state_dtype} triton vs torch", max_rel_err(logits["triton"], logits["torch"]),
                  tol)
            check(f"chunked decode {state_dtype} vs recurrent", max_rel_err(logits["triton"], logits["recurrent"]),
                  tol)

    # the chunked-form step alone, Triton vs window_step_torch (ssd_window_step) token by token over two full
    # windows and the next one's first row: each window's first row (no earlier tokens) and last (the fold);
    # window 16 with two head-dim blocks (a ragged p tail), window 5 with p 8, a masked
    # d_state tail and two groups (the window's tile padded to 8 rows), window 3 with a d_state of 6 (an int8 state
    # read bytewise, not as words). Tolerances (y,
    # state, caches) by state and cache dtype: a bf16 state is a last bit apart after a fold, int8 up to one
    # quantum (8e-3); with bf16 caches (and a bf16 model) y is normed from sums of terms a hundred times its size
    # (the 100x caches), so the order of a sum shows: steps of 1-5e-2 in a row of 5e-3
    from avgkit_mamba.ops.dispatch import window_step, window_step_torch
    from avgkit_mamba.ops.state_quant import dequantize_rows

    dtypes = {(torch.float32, torch.float32): (1e-5, 1e-5, 1e-6), (torch.bfloat16, torch.float32): (1e-2, 1e-2, 1e-6),
              (torch.int8, torch.float32): (1e-4, 8e-3, 1e-6), (torch.float32, torch.bfloat16): (8e-2, 2e-2, 1e-2)}
    for b, h, p, g, n, window in ((2, 2, 24, 1, 16, 16), (1, 4, 8, 2, 24, 5), (1, 2, 8, 1, 6, 3)):
        w = 4
        d_inner, conv_dim, weight, bias, A_log, D, dt_bias, nw = layer_params(h, p, g, n, r, gen, w)
        for (sdt, dtype), tols in dtypes.items():
            label = f"window step K{window} p{p} n{n} {str(sdt)[6:]} state, {str(dtype)[6:]} caches"
            ssm, scale = random_state(b, h, p, n, sdt, r)
            # the caches start with stale values (an earlier window's): rows s >= j must weigh nothing
            caches = [100 * r(b, window, h, p).to(dtype), 100 * r(b, window, g, n).to(dtype),
                      r(b, window, h).abs(), 30 * r(b, window, h)]
            got = [r(b, conv_dim, w).to(dtype), ssm, scale, *caches]
            ref = [t.clone() if t is not None else None for t in got]
            errs = [0.0, 0.0, 0.0]
            for t in range(2 * window + 1):
                zxbcdt, length = r(b, d_inner + conv_dim + h).to(dtype), torch.tensor([t])
                before = got[1].clone()
                outs = [fn(zxbcdt, st[0], weight, bias, *st[1:], length, A_log, D, dt_bias, nw, 1e-5, g)
                        for fn, st in ((partial(window_step, impl="triton"), got), (window_step_torch, ref))]
                states = [st[1].float() if st[2] is None else dequantize_rows(st[1], st[2]) for st in (got, ref)]
                cache_err = max(max_rel_err(a.float(), c.float()) for a, c in zip(got[3:], ref[3:], strict=True))
                errs = [max(errs[0], max_rel_err(outs[0].float(), outs[1].float())),
                        max(errs[1], max_rel_err(*states)), max(errs[2], cache_err)]
                if t % window != window - 1 and not torch.equal(got[1], before):
                    raise SystemExit(f"FAILED: {label}: the state was written inside a window (token {t})")
            for what, err, tol in zip(("y", "state", "caches"), errs, tols, strict=True):
                check(f"{label} {what}", err, tol)


@contextlib.contextmanager
def _counting(module, name: str, calls: list):
    """Within the block, each call of ``module.name`` appends 1 to ``calls``."""
    fn = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    setattr(module, name, counted)
    try:
        yield
    finally:
        setattr(module, name, fn)


def deferred_norm_checks() -> None:
    """The norm left to the block boundary (``StepTile.defer_norm``): the state update's ``y * silu(z) * w`` times
    the per-row factor from its partial sums = the normed step, for each conv placement and state dtype; the
    boundary's ``y_norm`` = its torch reference; a norm of two groups is never deferred; the chunked form's step
    likewise."""
    gen = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    from avgkit_mamba.ops import triton_step
    from avgkit_mamba.ops.norm_torch import DeferredNorm
    from avgkit_mamba.ops.norm_torch import add_norm_modulate as add_norm_modulate_torch
    from avgkit_mamba.ops.triton_norm import add_norm_modulate_triton

    b, h, p, n, w = 3, 4, 16, 16, 4
    for g in (1, 2):
        d_inner, conv_dim, weight, bias, A_log, D, dt_bias, nw = layer_params(h, p, g, n, r, gen, w)
        for sdt in (torch.float32, torch.bfloat16, torch.int8):
            for tile in (triton_step.StepTile(8, 4, 1, False, 1, True, 0, True),  # conv first: no epilogue
                         triton_step.StepTile(16, 4, 2, defer_norm=True)):  # conv inside: the epilogue shifts B/C
                ssm, scale = random_state(b, h, p, n, sdt, r)
                conv = r(b, conv_dim, w)
                states = {k: (conv.clone(), ssm.clone(), None if scale is None else scale.clone()) for k in "dn"}
                with triton_step.split_rule(lambda rows, hd, quant, tile=tile: tile):
                    for step in range(2):
                        zxbcdt = r(b, d_inner + conv_dim + h)
                        c, s_, sc = states["n"]
                        ref = triton_step.decode_step_triton(zxbcdt, c, weight, bias, s_, A_log, D, dt_bias, nw,
                                                             1e-5, p, g, state_scale=sc)
                        c, s_, sc = states["d"]
                        epilogues = []
                        with _counting(triton_step, "_launch_epilogue", epilogues):
                            y, y_norm = triton_step.decode_step_deferred_triton(
                                zxbcdt, c, weight, bias, s_, A_log, D, dt_bias, nw, 1e-5, p, g, state_scale=sc)
                        label = f"deferred norm g{g} {str(sdt)[6:]} {'pc' if tile.preconv else 'inside'} #{step}"
                        if g > 1:
                            if y_norm is not None:
                                raise SystemExit(f"FAILED: {label}: a norm of two groups was deferred")
                            check(f"{label} (not deferred) y", max_rel_err(y, ref), 0.0)
                            continue
                        if y_norm is None or y_norm.sumsq.shape != (b, d_inner):
                            raise SystemExit(f"FAILED: {label}: no deferred norm or wrong partial sums' shape")
                        check(f"{label} y * rstd", max_rel_err(y * y_norm.rstd(), ref), 1e-5)
                        if epilogues != ([] if tile.preconv else [1]):
                            raise SystemExit(f"FAILED: {label}: {len(epilogues)} epilogue launches")
                        same = all(torch.equal(a, c) for a, c in zip(states["d"], states["n"], strict=True)
                                   if a is not None)
                        check(f"{label} states as the normed step's", 0.0 if same else float("inf"), 0.0)

    # the chunked form's step likewise, over a window of 3 and the next one's first row (a fold in between)
    from avgkit_mamba.ops import triton_window

    window = 3
    for g in (1, 2):
        d_inner, conv_dim, weight, bias, A_log, D, dt_bias, nw = layer_params(h, p, g, n, r, gen, w)
        for sdt in (torch.float32, torch.bfloat16, torch.int8):
            ssm, scale = random_state(b, h, p, n, sdt, r)
            first = [r(b, conv_dim, w), ssm, scale, torch.zeros(b, window, h, p), torch.zeros(b, window, g, n),
                     torch.zeros(b, window, h), torch.zeros(b, window, h)]
            states = {k: [None if t is None else t.clone() for t in first] for k in "dn"}
            for step in range(window + 1):
                zxbcdt, length = r(b, d_inner + conv_dim + h), torch.tensor([step])
                ref = triton_window.window_step_triton(zxbcdt, states["n"][0], weight, bias, *states["n"][1:], length,
                                                       A_log, D, dt_bias, nw, 1e-5, g)
                epilogues = []
                with _counting(triton_window, "_launch_epilogue", epilogues):
                    y, y_norm = triton_window.window_step_deferred_triton(
                        zxbcdt, states["d"][0], weight, bias, *states["d"][1:], length, A_log, D, dt_bias, nw, 1e-5,
                        g)
                label = f"deferred norm, chunked form, g{g} {str(sdt)[6:]} #{step}"
                if g > 1:
                    if y_norm is not None or epilogues != [1]:
                        raise SystemExit(f"FAILED: {label}: a norm of two groups was deferred")
                    check(f"{label} (not deferred) y", max_rel_err(y, ref), 0.0)
                    continue
                if y_norm is None or y_norm.sumsq.shape != (b, d_inner) or epilogues:
                    raise SystemExit(f"FAILED: {label}: no deferred norm, wrong partial sums or an epilogue launch")
                check(f"{label} y * rstd", max_rel_err(y * y_norm.rstd(), ref), 1e-5)
                same = all(torch.equal(a, c) for a, c in zip(states["d"], states["n"], strict=True) if a is not None)
                check(f"{label} states and caches as the normed step's", 0.0 if same else float("inf"), 0.0)

    d, parts = 24, 6
    y, gate, res, wn, mod = r(b, d), r(b, d), r(b, d), 1 + 0.1 * r(d), r(b, 2, d)
    y_norm = DeferredNorm(torch.rand(b, parts, generator=gen) * 5, 40, 1e-5)
    got = add_norm_modulate_triton(y, gate, res, wn, mod[:, 0], mod[:, 1], 1e-5, torch.float32, y_norm)
    want = add_norm_modulate_torch(y, gate, res, wn, 1e-5, mod[:, 0], mod[:, 1], True, y_norm)
    for what, a, c in zip(("x", "residual"), got, want, strict=True):
        check(f"add+norm+modulate with a deferred norm: {what}", max_rel_err(a, c), 1e-5)
    # the backbone's last boundary: norm_f, then the final layer's norm (a width that leaves the block part empty)
    # and modulation
    d = 20
    y, gate, res, wn, wf, mod = r(b, d), r(b, d), r(b, d), 1 + 0.1 * r(d), 1 + 0.3 * r(d), r(b, 2, d)
    for m in (mod, None):
        shift, scale = (None, None) if m is None else (m[:, 0], m[:, 1])
        got = add_norm_modulate_triton(y, gate, res, wn, shift, scale, 1e-5, torch.float32, None, (wf, 1e-6))
        want = add_norm_modulate_torch(y, gate, res, wn, 1e-5, shift, scale, True, None, (wf, 1e-6))
        one = add_norm_modulate_torch(y, gate, res, wn, 1e-5, shift, scale, True)
        for what, a, c in zip(("x", "residual"), got, want, strict=True):
            check(f"add+norm+norm{'+modulate' if m is not None else ''}: {what}", max_rel_err(a, c), 1e-5)
        if max_rel_err(got[0], one[0]) < 1e-3:
            raise SystemExit("FAILED: the second norm changed nothing")


def in_proj_checks() -> None:
    """``in_proj`` with the conv, dt and decay in its epilogue (``triton_in_proj``) = ``F.linear`` then the conv's
    launch, for fp32 and fp16, with and without the conv's and dt's biases, rows and columns that leave blocks
    partly empty; the projected decode step = the deferred step from ``F.linear``'s output (same states); and a
    backbone decoding with ``step_kernel: fused-in-proj`` = the torch path."""
    import torch.nn.functional as F
    from avgkit_mamba.ops import conv_torch, triton_step
    from avgkit_mamba.ops.triton_in_proj import ProjTile, in_proj_conv_triton

    gen = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    for dtype in (torch.float32, torch.float16):
        for b, (h, p, g, n), biases, tile in ((5, (4, 8, 1, 8), True, None), (3, (3, 8, 2, 4), False, None),
                                              (2, (4, 8, 1, 8), True, ProjTile(16, 32, 16, 2, 4, hoist=False))):
            d_inner, conv_dim = h * p, h * p + 2 * g * n
            x, w = r(b, 24).to(dtype), (r(d_inner + conv_dim + h, 24) / 5).to(dtype)
            cw, cb, dtb, a_log = (r(conv_dim, 4) / 2).to(dtype), r(conv_dim).to(dtype), r(h).to(dtype), torch.rand(h)
            conv = r(b, conv_dim, 4).to(dtype)
            want_conv = conv.clone()
            z, xc = in_proj_conv_triton(x, w, conv, cw, cb if biases else None, dtb if biases else None, a_log, True,
                                        d_inner, tile)
            zr, xbc, dt = F.linear(x, w).split([d_inner, conv_dim, h], -1)
            want = conv_torch.conv_step(xbc, want_conv, cw, cb if biases else None).float()
            dtr = F.softplus(dt.float() + (dtb.float() if biases else 0))
            label = f"in_proj + conv b{b} h{h} g{g} {str(dtype)[6:]} biases {biases}"
            tol = 1e-5 if dtype == torch.float32 else 2e-3
            check(f"{label} z", max_rel_err(z, zr), tol)
            check(f"{label} conv", max_rel_err(xc[:, :conv_dim], want), tol)
            check(f"{label} dt", max_rel_err(xc[:, conv_dim:conv_dim + h], dtr), tol)
            check(f"{label} decay", max_rel_err(xc[:, conv_dim + h:], torch.exp(-dtr * a_log.exp())), tol)
            check(f"{label} windows", max_rel_err(conv, want_conv), tol)

    b, h, p, n, w = 3, 4, 16, 16, 4
    d_inner, conv_dim, weight, bias, A_log, D, dt_bias, nw = layer_params(h, p, 1, n, r, gen, w)
    w_in = r(d_inner + conv_dim + h, 24) / 5
    for sdt in (torch.float32, torch.int8):
        ssm, scale = random_state(b, h, p, n, sdt, r)
        first = (r(b, conv_dim, w), ssm, scale)
        states = {k: [None if t is None else t.clone() for t in first] for k in "pd"}
        for step in range(2):
            x = r(b, 24)
            y, y_norm = triton_step.decode_step_projected_triton(x, w_in, states["p"][0], weight, bias, states["p"][1],
                                                                 A_log, D, dt_bias, nw, 1e-5, p, 1, states["p"][2])
            ref, ref_norm = triton_step.decode_step_deferred_triton(
                F.linear(x, w_in), states["d"][0], weight, bias, states["d"][1], A_log, D, dt_bias, nw, 1e-5, p, 1,
                state_scale=states["d"][2])
            label = f"projected decode step {str(sdt)[6:]} #{step}"
            check(f"{label} y * rstd", max_rel_err(y * y_norm.rstd(), ref * ref_norm.rstd()), 1e-5)
            for what, a, c in zip(("conv", "ssm", "scale"), states["p"], states["d"], strict=True):
                if a is not None:
                    check(f"{label} {what} state", max_rel_err(a.float(), c.float()), 1e-5 if what != "ssm" or
                          sdt != torch.int8 else 1e-2)

    for kernel, state_dtype in (("fused-in-proj", "fp32"), ("fused-in-proj", "int8"), ("auto", "int8")):
        launches = []
        with _counting(triton_step, "decode_step_projected_triton", launches):
            steps = check_backbone_kernel(kernel, state_dtype, gen)  # 2 rows: auto fuses too
        if len(launches) != steps:
            raise SystemExit(f"FAILED: {kernel} backbone: {len(launches)} projected steps, expected {steps}")

    # auto above FUSED_IN_PROJ_MAX_ROWS rows: in_proj by F.linear, then the two-launch step (same values)
    from avgkit_mamba.ops import dispatch

    rows = dispatch.FUSED_IN_PROJ_MAX_ROWS + 1
    conv, (ssm, _) = r(rows, conv_dim, w), random_state(rows, h, p, n, torch.float32, r)
    states = {k: (conv.clone(), ssm.clone()) for k in ("auto", "two-launch")}
    x = r(rows, 24)
    out = {}
    for kernel, (c, s_) in states.items():
        launches = []
        with _counting(triton_step, "decode_step_projected_triton", launches):
            y, y_norm = dispatch.decode_step_projected(x, w_in, c, weight, bias, s_, A_log, D, dt_bias, nw, 1e-5, p, 1,
                                                       impl="triton", kernel=kernel)
        if launches:
            raise SystemExit(f"FAILED: {kernel} at {rows} rows ran the fused in_proj")
        out[kernel] = y * y_norm.rstd()
    check(f"auto at {rows} rows = two-launch", max_rel_err(out["auto"], out["two-launch"]), 0.0)


def compile_checks() -> None:
    """torch.compile through the Triton scan (its custom ops are opaque graph nodes) = eager."""
    import torch.nn.functional as F

    from avgkit.plugins import get_registry

    ops = torch.ops.avgkit_mamba
    compiled = {bk: torch.compile(chunk_scan, backend=bk, fullgraph=True) for bk in ("aot_eager", "inductor")}
    # all optional inputs, several chunks; then none of them (empty placeholders), one chunk
    full = ssd_problem(1, 20, 2, 8, 1, 16, with_z=True, with_init=True)
    bare = {**ssd_problem(2, 13, 2, 8, 2, 8, seed=3, with_D=False), "dt_bias": None}
    # a third shape: by now Dynamo compiles with symbolic sizes (the fakes run on SymInts)
    longer = ssd_problem(1, 28, 2, 8, 1, 16, seed=5, with_z=True, with_init=True)
    for label, t, chunk, final, backends in (("all inputs", full, 8, True, ("aot_eager", "inductor")),
                                             ("no D/z/bias/states", bare, 16, False, ("aot_eager",)),
                                             ("all inputs, new length", longer, 8, True, ("aot_eager",))):
        eager = run_scan(chunk_scan, t, chunk, final, impl="triton")
        for bk in backends:  # same kernels on the same inputs: equal up to rounding noise
            compare_runs(f"compile {bk} {label}", run_scan(compiled[bk], t, chunk, final, impl="triton"), eager, 1e-6)

    # the ops' registrations (schema, fake, autograd, AOT dispatch with dynamic shapes)
    t = full
    leaves = {k: v.clone().requires_grad_() for k, v in t.items()}
    fwd_args = (*(leaves[k] for k in ("x", "dt", "A", "B", "C")), 8, leaves["D"], leaves["z"], leaves["dt_bias"],
                True, leaves["initial_states"], True)
    with torch.no_grad():
        y, final, ypre, dtp, acs = ops.ssd_chunk_scan_fwd(*fwd_args)
    bwd_args = (torch.randn_like(y), torch.randn_like(final), *(t[k] for k in ("x", "dt", "A", "B", "C")), 8, t["D"],
                t["z"], ypre, t["dt_bias"], True, t["initial_states"], dtp, acs)
    for name, op, args in (("fwd", ops.ssd_chunk_scan_fwd, fwd_args), ("bwd", ops.ssd_chunk_scan_bwd, bwd_args)):
        print(f"opcheck ssd_chunk_scan_{name}: {torch.library.opcheck(op, args)}", flush=True)  # raises on failure

    # a whole tiny backbone + conditioner: loss and every parameter gradient
    reg = get_registry()
    spec, cspec = reg.get("backbone", "mamba2"), reg.get("conditioner", "adaln-group")
    torch.manual_seed(0)
    # 8 positions with the class prefix: one chunk, as in training (several chunks are checked above)
    bb = spec.factory(spec.resolve("tiny", {"vocab_size": 32, "num_tokens": 8, "impl": "triton"}))
    cond = cspec.factory(cspec.resolve(None, {"num_classes": 10, "groups": 2}), dim=bb.dim, num_layers=bb.num_layers)
    with torch.no_grad():  # zero-initialised adaLN would hide the modulation path
        for prm in cond.parameters():
            prm.add_(torch.randn_like(prm) * 0.05)
    params = [*bb.parameters(), *cond.parameters()]
    codes, labels = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0)), torch.tensor([1, 7])

    def loss_fn(codes: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(bb(codes, cond(labels)).flatten(0, 1), codes.flatten())

    def loss_and_grads(fn) -> list[Tensor]:
        for prm in params:
            prm.grad = None
        loss = fn(codes, labels)
        loss.backward()
        return [loss.detach(), *(prm.grad for prm in params)]

    ref = loss_and_grads(loss_fn)
    got = loss_and_grads(torch.compile(loss_fn, backend="aot_eager", fullgraph=True))
    check("compile aot_eager backbone loss", max_rel_err(got[0], ref[0]), 1e-6)
    missing = sum(g is None for g in got[1:])
    if missing:
        raise SystemExit(f"FAILED: compiled backbone: {missing} parameter gradients missing")
    check("compile aot_eager backbone grads (max)", max(max_rel_err(a, b) for a, b in zip(got[1:], ref[1:], strict=True)), 1e-5)

def conv_checks() -> None:
    """The whole-sequence conv kernels = ``conv_torch.causal_conv1d`` (values and all three gradients), on a
    strided channels-last input; every gradient slot written (poisoned allocations change nothing); the ops'
    registrations; torch.compile through them."""
    from avgkit_mamba.ops import conv_torch
    from avgkit_mamba.ops.dispatch import causal_conv

    def run(fn, x, w, bias, act, dy):
        leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, bias)]
        y = fn(*leaves, act)
        (y.float() * dy).sum().backward()
        return [y, *(t.grad for t in leaves if t is not None)]

    def torch_conv(x, w, bias, act):
        return conv_torch.causal_conv1d(x.transpose(1, 2), w, bias, activation=act).transpose(1, 2)

    def triton_conv(x, w, bias, act):
        return causal_conv(x, w, bias, activation=act, impl="triton")

    g = torch.Generator().manual_seed(0)
    # row strides 52, 33, 25 and 32: the kernels' stride factor X_ALIGN is 4, 1, 1 and 8
    for b, L, d, w, has_bias, act, pad in ((2, 37, 40, 4, True, "silu", 12), (1, 20, 24, 4, False, None, 9),
                                           (2, 5, 16, 4, True, "silu", 9), (1, 70, 24, 4, True, "silu", 8)):
        wide = torch.randn(b, L, d + pad, generator=g)
        x = wide[..., 5:5 + d]  # a column slice, as the mixer passes in_proj's output
        wt, bias = torch.randn(d, w, generator=g) * 0.5, torch.randn(d, generator=g) if has_bias else None
        dy = torch.randn(b, L, d, generator=g)
        ref = run(torch_conv, x, wt, bias, act, dy)
        got = run(triton_conv, x, wt, bias, act, dy)
        if not got[0].is_contiguous():
            raise SystemExit("FAILED: the Triton conv's output is not contiguous")
        for name, a, r in zip(("y", "dx", "dw", "dbias")[:len(got)], got, ref, strict=True):
            check(f"conv {b}x{L}x{d} w{w} {act} {name}", max_rel_err(a, r), 1e-5)
        with _Poisoned(float("nan")):
            poisoned = run(triton_conv, x, wt, bias, act, dy)
        same = all(torch.equal(a, p) for a, p in zip(got, poisoned, strict=True))
        check(f"conv {b}x{L}x{d} poisoned slots", 0.0 if same else float("inf"), 0.0)
    # bf16 input (fp32 weights, as under autocast): the torch path rounds its products to bf16
    x = torch.randn(2, 24, 32, generator=g).bfloat16()
    wt, bias, dy = torch.randn(32, 4, generator=g) * 0.5, torch.randn(32, generator=g), torch.randn(2, 24, 32)
    exact = run(torch_conv, x.double(), wt.double(), bias.double(), "silu", dy.double())
    for label, out in (("triton", run(triton_conv, x, wt, bias, "silu", dy)),
                       ("torch", run(torch_conv, x, wt, bias, "silu", dy))):
        errs = [max_rel_err(a.double(), r) for a, r in zip(out, exact, strict=True)]
        print(f"conv bf16 {label} vs fp64 max rel errs {[f'{e:.1e}' for e in errs]}", flush=True)
        if label == "triton":
            check("conv bf16 triton vs fp64 (max)", max(errs), 2e-2)

    ops = torch.ops.avgkit_mamba
    x, wt, bias = torch.randn(2, 9, 16, generator=g), torch.randn(16, 4, generator=g), torch.randn(16, generator=g)
    print(f"opcheck causal_conv_fwd: {torch.library.opcheck(ops.causal_conv_fwd, (x, wt, bias, True))}", flush=True)
    print(f"opcheck causal_conv_bwd: {torch.library.opcheck(ops.causal_conv_bwd, (torch.randn_like(x), x, wt, bias, True))}",
          flush=True)
    dy = torch.randn_like(x)
    eager = run(triton_conv, x, wt, bias, "silu", dy)
    for bk in ("aot_eager", "inductor"):
        got = run(torch.compile(triton_conv, backend=bk, fullgraph=True), x, wt, bias, "silu", dy)
        check(f"conv compile {bk}", max(max_rel_err(a, r) for a, r in zip(got, eager, strict=True)), 1e-6)


def core_checks() -> None:
    """A mixer's whole-sequence core as one Triton op (conv, scan, gated norm, ``in_proj``'s gradient written in
    place) = the three ops one after another and the PyTorch path: output and every parameter's gradient, for
    row strides the kernels align by 8, 4 and 2, one and two groups, several chunks with a partial last one;
    poisoned allocations change nothing; the ops' registrations; torch.compile through them. (bf16: the GPU tests,
    ``test_mamba_core.py``; the interpreter's bf16 scan is not the GPU's.)"""
    from avgkit_mamba.mixer import Mamba2Mixer
    from avgkit_mamba.ops import dispatch, triton_gated_norm

    def run(mixer, x, dy, impl, core=True):
        mixer.impl, saved = impl, dispatch.TRITON_MIXER_CORE
        dispatch.TRITON_MIXER_CORE = core
        try:
            mixer.zero_grad(set_to_none=True)
            leaf = x.detach().clone().requires_grad_()
            y = mixer(leaf)
            (y.float() * dy).sum().backward()
        finally:
            dispatch.TRITON_MIXER_CORE = saved
        return [y, leaf.grad] + [p.grad for p in mixer.parameters()]

    names = ["y", "dx"]
    # in_proj widths 168, 164 and 162 (stride factors 8, 4, 2); ngroups 1 and 2; 37 tokens over chunks of 16
    for headdim, ngroups, L in ((8, 1, 37), (16, 1, 37), (32, 2, 20)):
        torch.manual_seed(0)
        mixer = Mamba2Mixer(32, d_state=16, headdim=headdim, ngroups=ngroups, chunk_size=16, impl="triton")
        with torch.no_grad():
            for prm in mixer.parameters():  # move every parameter off its init, so each gradient is generic
                prm.add_(0.1 * torch.randn_like(prm))
        tag = f"core h{mixer.nheads} g{ngroups} L{L}"
        if not dispatch.mixer_core_applies(torch.empty(1, 1, 1), 4, 16, "triton"):
            raise SystemExit("FAILED: the one-op core does not apply under the interpreter")
        x, dy = torch.randn(2, L, 32), torch.randn(2, L, 32)
        ref = run(mixer, x, dy, "torch")
        got = run(mixer, x, dy, "triton")
        pnames = names + [n for n, _ in mixer.named_parameters()]
        for name, a, r in zip(pnames, got, ref, strict=True):
            check(f"{tag} {name} vs torch", max_rel_err(a, r), 2e-5)
        if headdim != 8:
            continue  # the slower interpreter runs below once
        three = run(mixer, x, dy, "triton", core=False)
        for name, a, t in zip(pnames, got, three, strict=True):
            check(f"{tag} {name} vs three ops", max_rel_err(a, t), 2e-5)
        with _Poisoned(float("nan")):
            poisoned = run(mixer, x, dy, "triton")
        same = all(torch.equal(a, p) for a, p in zip(got, poisoned, strict=True))
        check(f"{tag} poisoned allocations", 0.0 if same else float("inf"), 0.0)
        saved_tile, triton_gated_norm.ROW_TILE = triton_gated_norm.ROW_TILE, 2  # the norm's rows in pairs
        try:
            paired = run(mixer, x, dy, "triton")
        finally:
            triton_gated_norm.ROW_TILE = saved_tile
        for name, a, r in zip(pnames, paired, ref, strict=True):
            check(f"{tag} {name} norm rows in pairs vs torch", max_rel_err(a, r), 2e-5)

    ops = torch.ops.avgkit_mamba
    m = mixer
    zx = m.in_proj(torch.randn(2, 20, 32)).detach()
    args = (zx, m.conv1d.weight.squeeze(1).detach(), m.conv1d.bias.detach(), m._A().detach(), m.D.detach(),
            m.dt_bias.detach(), m.norm.weight.detach(), m.norm.eps, m.headdim, m.ngroups, m.d_state, m.chunk_size)
    print(f"opcheck mixer_core_fwd: {torch.library.opcheck(ops.mixer_core_fwd, args)}", flush=True)
    # in_proj's output with padded rows (as inductor may lay it out; the ops take it without a copy)
    wide = torch.randn(2, 20, zx.shape[-1] + 12)
    padded = wide[..., :zx.shape[-1]]
    got = [t.clone() for t in ops.mixer_core_fwd(padded, *args[1:])[:2]]
    ref = ops.mixer_core_fwd(padded.contiguous(), *args[1:])[:2]
    check("core padded in_proj rows", max(max_rel_err(a, r) for a, r in zip(got, ref, strict=True)), 0.0)
    out, xbc, y, rstd, dtp, acs = ops.mixer_core_fwd(*args)
    bargs = (torch.randn_like(out), zx, xbc, y, rstd, dtp, acs, *args[1:7], *args[8:])
    print(f"opcheck mixer_core_bwd: {torch.library.opcheck(ops.mixer_core_bwd, bargs)}", flush=True)
    x, dy = torch.randn(2, 20, 32), torch.randn(2, 20, 32)
    eager = run(m, x, dy, "triton")
    for bk in ("aot_eager", "inductor"):
        compiled = torch.compile(m, backend=bk, fullgraph=True)
        got = run(compiled, x, dy, "triton")
        check(f"core compile {bk}", max(max_rel_err(a, r) for a, r in zip(got, eager, strict=True)), 1e-5)


class _Poisoned:
    """Within the block, new float tensors from ``torch.empty``, ``empty_like`` and ``Tensor.new_empty`` hold
    ``value`` instead of whatever memory held: a kernel that reads an element nobody wrote then changes its
    result (on a GPU that memory differs from call to call, and so would the samples)."""

    def __init__(self, value: float) -> None:
        self.value, self.saved = value, None

    def _wrap(self, fn):
        def filled(*args, **kwargs):
            t = fn(*args, **kwargs)
            if t.is_floating_point():
                t.fill_(self.value)
            return t
        return filled

    def __enter__(self):
        self.saved = torch.empty, torch.empty_like, torch.Tensor.new_empty
        torch.empty, torch.empty_like, torch.Tensor.new_empty = map(self._wrap, self.saved)

    def __exit__(self, *exc):
        torch.empty, torch.empty_like, torch.Tensor.new_empty = self.saved


def poison_checks() -> None:
    """The scan, prefill and a decoding step read no memory they did not write: poisoned allocations
    change nothing (the Triton path, at the GPU's block sizes for a one-token prefill)."""
    import avgkit_mamba.ops.triton_ssd as ts

    from avgkit.interfaces import Conditioning
    from avgkit.plugins import get_registry

    def scan(shape, dtype, cap, value):
        b, L, h, p, n, Q = shape
        g = torch.Generator().manual_seed(0)
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        x, dt = r(b, L, h, p).to(dtype), (r(b, L, h) * 0.5 - 2).to(dtype)
        A = -torch.exp(torch.rand(h, generator=g) * 2.77)
        B, C = r(b, L, 1, n).to(dtype), r(b, L, 1, n).to(dtype)
        init = torch.zeros(b, h, p, n, dtype=dtype)  # a prefill starts from a zeroed state
        saved = ts._interp_block.__defaults__
        ts._interp_block.__defaults__ = (cap,)  # the GPU's block sizes for the one-token prefill
        try:
            with _Poisoned(value) if value is not None else contextlib.nullcontext():
                return ts.chunk_scan_triton(x, dt, A, B, C, chunk_size=Q, D=torch.ones(h).to(dtype),
                                            dt_bias=r(h).to(dtype) * 0.1, dt_softplus=True, initial_states=init,
                                            return_final_states=True)
        finally:
            ts._interp_block.__defaults__ = saved

    for shape, cap in (((1, 1, 1, 64, 128, 256), 64), ((1, 40, 2, 16, 32, 16), 16)):
        for dtype, value in ((torch.float32, 1e4), (torch.bfloat16, float("nan"))):
            clean = scan(shape, dtype, cap, None)
            got = scan(shape, dtype, cap, value)
            same = all(torch.equal(a, b) for a, b in zip(clean, got, strict=True))
            check(f"poisoned scan {shape[:2]} {str(dtype)[6:]} {value}", 0.0 if same else float("inf"), 0.0)

    # Passing states is never in place: on a GPU a program's threads load and store one address
    # unordered, so an in-place pass read states it had already overwritten (bf16 initial state).
    g = torch.Generator().manual_seed(2)
    own = torch.randn(2, 3, 2, 4, 8, generator=g)
    acs = -torch.rand(2, 2, 3, 4, generator=g).cumsum(-1)
    for init in (None, torch.randn(2, 2, 4, 8, generator=g).bfloat16()):
        before = own.clone()
        entering, final = ts._pass_states(own, acs, init, 4)
        decay = acs[..., -1].exp().permute(0, 2, 1)[..., None, None]  # (b, c, h, 1, 1)
        h = torch.zeros_like(own[:, 0]) if init is None else init.float()
        want = []
        for c in range(own.shape[1]):
            want.append(h)
            h = decay[:, c] * h + own[:, c]
        same_input = torch.equal(own, before)
        err = max(max_rel_err(entering, torch.stack(want, 1)), max_rel_err(final, h))
        check(f"pass states, init {init is not None}", err if same_input else float("inf"), 1e-6)

    reg = get_registry()
    spec, cspec = reg.get("backbone", "mamba2"), reg.get("conditioner", "adaln-group")
    for state_dtype in ("bf16", "int8"):  # the sampling default and the one-byte state
        torch.manual_seed(0)
        bb = spec.factory(spec.resolve("tiny", {"vocab_size": 64, "num_tokens": 16, "impl": "triton",
                                                "state_dtype": state_dtype})).eval()
        cond_model = cspec.factory(cspec.resolve(None, {"num_classes": 10}), dim=bb.dim,
                                   num_layers=bb.num_layers).eval()
        with torch.no_grad():
            for prm in cond_model.parameters():
                prm.normal_(std=0.1)
        labels = torch.arange(4)
        cond = Conditioning.cat([cond_model(labels), cond_model.null(4, "cpu")])

        def run(value, bb=bb, cond=cond):
            state = bb.init_state(8, device="cpu")
            with torch.inference_mode(), (_Poisoned(value) if value is not None else contextlib.nullcontext()):
                logits = [bb.prefill(state, cond)]
                logits.append(bb.step(state, logits[-1].argmax(-1), cond))
            return logits, [t.clone() for s in state.layers for t in (s.conv, s.ssm)]

        clean, got = run(None), run(float("nan"))
        same = all(torch.equal(a, b) for a, b in zip(clean[0] + clean[1], got[0] + got[1], strict=True))
        check(f"poisoned prefill + step, {state_dtype} state", 0.0 if same else float("inf"), 0.0)


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "scan"
    {"scan": scan_checks, "step": step_checks, "decode": decode_checks, "compile": compile_checks,
     "int8": int8_state_checks, "fused": fused_checks, "poison": poison_checks, "conv": conv_checks,
     "core": core_checks, "inproj": in_proj_checks}[which]()
    print("OK")
