"""Check the Triton Mamba-2 kernels against the PyTorch ops on a CUDA GPU at real shapes.

For each case (AiM-B and AiM-L layer shapes, plus multi-chunk and ragged lengths with
initial and final states) and each dtype, runs the chunked scan both ways on the same
inputs and compares the output, the final states and every gradient (x, dt, A, B, C,
D, z, dt_bias, initial_states); then the fused decode step. Error = max |a - b| /
max |b|; tolerance 1e-4 in fp32, 2e-2 in bf16. Prints a table and writes JSON.

    python plugins/mamba/scripts/gpu_check.py --out gpu_check.json [--quick]
    python plugins/mamba/scripts/gpu_check.py --smoke --out FILE   # tiny fp32 shapes, CPU, Triton interpreted

The decode step is also checked for each state dtype (fp32, bf16, int8) and each Triton
kernel (``two-launch``, the default, and ``one-launch``), and timed per layer at batch
32/128/512 interleaved in one process: ``decode_kernel_timing`` gives ms, the bytes the
step must move, the state bandwidth and its fraction of the copy bandwidth measured in
the same run.

Exit status 1 when any check fails. ``--smoke`` runs every check and timing on the CPU
under the Triton interpreter at tiny sizes, so that the script is known to run before
a GPU is at hand (its timings mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if "--smoke" in sys.argv:  # the Triton interpreter must be chosen before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

try:
    import avgkit_mamba  # noqa: F401
except ImportError:  # running from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avgkit_mamba.ops.dispatch import fused_step, fused_step_torch  # noqa: E402
from avgkit_mamba.ops.ssd_torch import ssd_chunk_scan  # noqa: E402

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}
GRADS = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"]
# --smoke sizes: a layer of heads 2 x head dim 8 x state 16, a 2-layer model of the tiny preset
SMOKE_LAYER = {"nheads": 2, "p": 8, "n": 16}
SMOKE_MIXER = {"d_model": 16, "d_state": 16, "headdim": 8, "chunk_size": 8, "batch": 1, "length": 12, "prefill": 9}
SMOKE_DECODE = {"preset": "tiny", "n_layer": 2, "batch": 2, "steps": 2, "vocab": 64}


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, device: torch.device | str, warmup: int, reps: int) -> float:
    """Median milliseconds of ``fn`` after ``warmup`` calls: CUDA events on a GPU, wall time on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if torch.device(device).type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def replayed(fn, device: torch.device | str, calls: int = 20):
    """``fn`` as the sampler runs it: on a GPU ``calls`` calls captured in one CUDA graph, returned as a replay
    that does one call's work on average (a single eager call is bound by its launches, not the kernel)."""
    if torch.device(device).type != "cuda":
        return fn
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and autotune outside the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph.replay


def graph_ms(fn, device: torch.device | str, warmup: int, reps: int, calls: int = 20) -> float:
    """Median milliseconds of one call of a ``replayed`` function (``calls`` per replay on a GPU)."""
    per = calls if torch.device(device).type == "cuda" else 1
    return median_ms(fn, device, warmup, reps) / per


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


def cases(quick: bool, smoke: bool = False) -> list[Case]:
    if smoke:  # several chunks, a partial last one, groups, initial + final states, z
        return [Case("tiny: 2 chunks, ragged 12, groups 2, init+final, z", 1, 12, 2, headdim=8, dstate=16, ngroups=2,
                     chunk=8, z=True, init=True, final=True)]
    b = 2 if quick else 8
    out = [
        Case("AiM-B layer (d 768)", b, 256, 24),
        Case("AiM-L layer (d 1024)", b, 256, 32),
        Case("AiM-B, 4 chunks, init+final, z", max(1, b // 2), 1024, 24, z=True, init=True, final=True),
        Case("AiM-B, ragged 257, groups 2", max(1, b // 2), 257, 24, ngroups=2, final=True),
    ]
    return out[:2] + out[2:3] if quick else out


def make_inputs(c: Case, dtype: torch.dtype, seed: int = 0, device: torch.device | str = "cuda") -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
    h = c.nheads
    return {
        "x": r(c.batch, c.seqlen, h, c.headdim).to(dtype),
        "dt": (r(c.batch, c.seqlen, h) * 0.5 - 2.0).to(dtype),
        "A": -torch.exp(torch.rand(h, generator=g, device=device) * 2.77),  # A in [-16, -1] like A_init_range
        "B": r(c.batch, c.seqlen, c.ngroups, c.dstate).to(dtype),
        "C": r(c.batch, c.seqlen, c.ngroups, c.dstate).to(dtype),
        "D": torch.ones(h, device=device) + 0.1 * r(h),
        "z": r(c.batch, c.seqlen, h, c.headdim).to(dtype) if c.z else None,
        "dt_bias": torch.log(torch.expm1(torch.exp(torch.rand(h, generator=g, device=device) * 4.6 - 6.9))),
        "initial_states": r(c.batch, h, c.headdim, c.dstate) if c.init else None,
    }


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def run_scan(c: Case, t: dict, impl: str) -> tuple[dict, float]:
    device = t["x"].device
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in t.items()}
    synchronize(device)
    start = time.perf_counter()
    kwargs = dict(chunk_size=c.chunk, D=leaves["D"], z=leaves["z"], dt_bias=leaves["dt_bias"], dt_softplus=True,
                  initial_states=leaves["initial_states"], return_final_states=c.final)
    if impl == "triton":
        from avgkit_mamba.ops.triton_ssd import chunk_scan_triton

        out = chunk_scan_triton(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], **kwargs)
    else:
        out = ssd_chunk_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], **kwargs)
    y, fs = out if c.final else (out, None)
    g = torch.Generator(device=device).manual_seed(1)
    loss = (y.float() * torch.randn(y.shape, generator=g, device=device)).sum()
    if fs is not None:
        loss = loss + (fs.float() * torch.randn(fs.shape, generator=g, device=device)).sum()
    loss.backward()
    synchronize(device)
    res = {"y": y.detach(), "final_states": None if fs is None else fs.detach()}
    res.update({f"d{k}": leaves[k].grad for k in GRADS if leaves[k] is not None})
    return res, time.perf_counter() - start


def check_scan(c: Case, dtype: torch.dtype, device: torch.device | str = "cuda") -> list[dict]:
    t = make_inputs(c, dtype, device=device)
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


def _repeat_diff(outs: list) -> dict | None:
    """None when every call gave bitwise the same tensor, else how the worst call differs."""
    worst = None
    for o in outs[1:]:
        if not torch.equal(o, outs[0]):
            ne = o != outs[0]
            d = {"elements_differing": int(ne.sum()), "of": o.numel(),
                 "max_abs": float((o.float() - outs[0].float()).abs().max())}
            worst = d if worst is None or d["elements_differing"] > worst["elements_differing"] else worst
    return worst


def check_repeat(c: Case, dtype: torch.dtype, device: torch.device | str = "cuda", calls: int = 3) -> list[dict]:
    """The forward scan and each of its stages, called ``calls`` times on the same inputs.

    A sampler's prefill is this scan with a final state, so any difference here makes GPU
    samples differ between identical calls. Rows name the first stage that differs.
    """
    from avgkit_mamba.ops import triton_ssd as ts

    t = make_inputs(c, dtype, device=device)
    x, dt, A, B, C = t["x"], t["dt"], t["A"].float().contiguous(), t["B"], t["C"]
    init = torch.zeros_like(t["initial_states"], dtype=dtype)  # a prefill starts from a zeroed state
    Q = c.chunk
    kw = dict(chunk_size=Q, D=t["D"], z=t["z"], dt_bias=t["dt_bias"], dt_softplus=True, initial_states=init,
              return_final_states=True)
    stages: dict[str, list] = {}
    with torch.inference_mode():
        for _ in range(calls):
            for impl, fn in (("triton", ts.chunk_scan_triton), ("torch", ssd_chunk_scan)):
                y, fs = fn(x, dt, A, B, C, **kw)
                stages.setdefault(f"{impl} scan y", []).append(y)
                stages.setdefault(f"{impl} scan final", []).append(fs)
            dtp, acs = ts._dt_cumsum(dt, A, t["dt_bias"], True, Q)
            stages.setdefault("triton dt_cumsum", []).append(torch.cat([dtp, acs]))
        dtp, acs = stages["triton dt_cumsum"][0].chunk(2)
        for _ in range(calls):
            states = ts._chunk_states(x, B, dtp, acs, Q, to_end=True)
            stages.setdefault("triton chunk_states", []).append(states)
            entering, final = ts._pass_states(states, acs, init, Q)
            stages.setdefault("triton pass_states", []).append(torch.cat([entering.flatten(), final.flatten()]))
            # only s <= t is computed (and read); the tiles above the diagonal are left unwritten
            stages.setdefault("triton cb", []).append(ts._cb(C, B, Q, dtp.shape[2]).tril())
    synchronize(device)
    rows = []
    for name, outs in stages.items():
        d = _repeat_diff(outs)
        rows.append({"case": c.name, "dtype": str(dtype).removeprefix("torch."), "tensor": f"repeat: {name}",
                     "rel_err": 0.0 if d is None else d["max_abs"], "tol": 0.0, "ok": d is None, "diff": d})
    return rows


def repeat_cases(smoke: bool) -> list[Case]:
    """A sampler's prefill (one prefix token, 128 rows, a zero initial state) and a training-like scan."""
    if smoke:
        return [Case("repeat: prefill-like", 4, 1, 2, headdim=8, dstate=16, chunk=8, init=True, final=True),
                Case("repeat: 2 chunks", 1, 12, 2, headdim=8, dstate=16, chunk=8, init=True, final=True)]
    return [Case("repeat: AiM-B prefill, 128 rows", 128, 1, 24, init=True, final=True),
            Case("repeat: AiM-B prefill, 64 rows", 64, 1, 24, init=True, final=True),
            Case("repeat: AiM-B 1024 tokens", 2, 1024, 24, init=True, final=True)]


def check_step(batch: int, nheads: int, dtype: torch.dtype, *, p: int = 64, n: int = 128, iters: int = 3,
               device: torch.device | str = "cuda") -> list[dict]:
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
    ngroups, w = 1, 4
    conv_dim = nheads * p + 2 * ngroups * n
    weight, bias = r(conv_dim, w) * 0.5, r(conv_dim) * 0.1
    A = -torch.exp(torch.rand(nheads, generator=g, device=device) * 2.77)
    D, dt_bias = torch.ones(nheads, device=device), r(nheads) * 0.5 - 3
    conv, ssm = r(batch, conv_dim, w).to(dtype), r(batch, nheads, p, n)
    conv_ref, ssm_ref = conv.clone(), ssm.clone()
    rows = []
    for i in range(iters):
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


def time_step(batch: int, nheads: int, dtype: torch.dtype, reps: int = 50, ssm_dtype: torch.dtype = torch.float32,
              *, p: int = 64, n: int = 128, warmup: int = 3, device: torch.device | str = "cuda") -> dict:
    """Median milliseconds of one fused decode step (AiM-B layer: p 64, n 128)."""
    w = 4
    conv_dim = nheads * p + 2 * n
    dev = device
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
        out[f"{impl}_ms"] = round(median_ms(call, dev, warmup, reps), 4)
    state_bytes = ssm.numel() * ssm.element_size() * 2 + conv.numel() * conv.element_size() * 2
    out["state_read_write_GB_s_triton"] = round(state_bytes / out["triton_ms"] / 1e6, 1)
    return {"batch": batch, "nheads": nheads, "dtype": str(dtype).removeprefix("torch."),
            "ssm_dtype": str(ssm_dtype).removeprefix("torch."), **out}


STATE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def _decode_step_problem(batch: int, nheads: int, state: str, dtype: torch.dtype, *, p: int, n: int,
                         device: torch.device | str, seed: int = 0) -> dict:
    """Inputs of one mixer decode step (AiM-like ranges) with a state of dtype ``state``."""
    from avgkit_mamba.ops.state_quant import quantize_rows_

    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
    w, d_inner = 4, nheads * p
    conv_dim = d_inner + 2 * n
    values = r(batch, nheads, p, n)
    scale = None
    if state == "int8":
        ssm, scale = torch.empty(values.shape, dtype=torch.int8, device=device), torch.empty(values.shape[:3],
                                                                                              device=device)
        quantize_rows_(values, ssm, scale)
    else:
        ssm = values.to(STATE_DTYPES[state])
    return {
        "zxbcdt": r(batch, d_inner + conv_dim + nheads).to(dtype), "conv_state": r(batch, conv_dim, w).to(dtype),
        "conv_weight": r(conv_dim, w) * 0.5, "conv_bias": r(conv_dim) * 0.1, "ssm_state": ssm,
        "A_log": torch.rand(nheads, generator=g, device=device) * 2.77, "D": torch.ones(nheads, device=device),
        "dt_bias": r(nheads) * 0.5 - 3, "norm_weight": 1 + 0.1 * r(d_inner), "norm_eps": 1e-5, "headdim": p,
        "ngroups": 1, "state_scale": scale,
    }


def _clone_problem(t: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in t.items()}


def _reference_problem(t: dict) -> dict:
    """A copy of a decode-step problem for the torch step at the kernel's precision: the same values in fp32.

    The kernel keeps the conv output in fp32 where the torch step rounds it to the model dtype
    (measured: that rounding was all of a 5e-3 state difference in a bf16 model).
    """
    ref = _clone_problem(t)
    return {**ref, "zxbcdt": ref["zxbcdt"].float(), "conv_state": ref["conv_state"].float()}


def _state_values(t: dict) -> torch.Tensor:
    from avgkit_mamba.ops.state_quant import load_state

    return load_state(t["ssm_state"], t["state_scale"])


def check_decode_kernels(batch: int, nheads: int, dtype: torch.dtype, *, p: int = 64, n: int = 128, iters: int = 3,
                         device: torch.device | str = "cuda", states: tuple[str, ...] = ("fp32", "bf16", "int8"),
                         kernels: tuple[str, ...] = ("two-launch", "one-launch"),
                         other_conv: bool = False, deferred: bool = False, words: bool | None = None) -> list[dict]:
    """Each Triton decode-step kernel and state dtype against the torch step, ``iters`` steps in a row
    (``other_conv``: the rule's split with the conv where the rule does not put it, inside the state update or in
    its own launch, so both paths are checked; ``deferred``: the step as the backbone calls it, its norm's per-row
    factor applied afterwards where the split defers it; ``words``: an int8 state read and written as words or
    bytewise, ``StepTile.words``, instead of as the rule does)."""
    from avgkit_mamba.ops import triton_step
    from avgkit_mamba.ops.dispatch import decode_step, decode_step_deferred

    def varied(rows: int, hd: int, quant: bool) -> triton_step.StepTile:
        t = triton_step._tile(rows, hd, quant)
        return t._replace(preconv=t.preconv != other_conv, words=t.words if words is None else words)

    rows = []
    rule = varied if other_conv or words is not None else None
    label = "" if not other_conv else " conv inside" if triton_step._tile(batch * nheads, p).preconv else " conv first"
    label += " deferred norm" if deferred else ""
    label += "" if words is None else " words" if words else " bytes"
    for state in states:
        for kernel in kernels:
            ours = _decode_step_problem(batch, nheads, state, dtype, p=p, n=n, device=device)
            ref = _reference_problem(ours)
            for i in range(iters):
                g = torch.Generator(device=device).manual_seed(100 + i)
                z = torch.randn(ours["zxbcdt"].shape, generator=g, device=device).to(dtype)
                with triton_step.split_rule(rule):
                    if deferred:
                        y, y_norm = decode_step_deferred(**{**ours, "zxbcdt": z}, impl="triton", kernel=kernel)
                        y = y if y_norm is None else y_norm.apply(y)
                    else:
                        y = decode_step(**{**ours, "zxbcdt": z}, impl="triton", kernel=kernel)
                y_ref = decode_step(**{**ref, "zxbcdt": z.float()}, impl="torch")
                # one int8 quantum is 1/127 of a row's maximum; bf16 rounds at 2^-8. A value that rounds the
                # other way in one path changes the next step's output by as much, so y gets the state's tolerance
                state_tol = {"fp32": TOL[torch.float32], "bf16": 1e-2, "int8": 8e-3}[state]
                for key, got, want, tol in (("y", y, y_ref, max(TOL[dtype], state_tol)),
                                            ("conv_state", ours["conv_state"], ref["conv_state"], 1e-5),
                                            ("ssm_state", _state_values(ours), _state_values(ref), state_tol)):
                    err = rel_err(got, want)
                    rows.append({"case": f"decode {kernel}{label} {state}-state b{batch} h{nheads} #{i}",
                                 "dtype": str(dtype).removeprefix("torch."), "tensor": key, "rel_err": err,
                                 "tol": tol, "ok": err <= tol, "first_call_s": None})
    return rows


def state_bytes(t: dict) -> dict:
    """Bytes one decode step must read and write for a layer: SSM state (+ scales) and conv window, in and out."""
    def size(x: torch.Tensor | None) -> int:
        return 0 if x is None else x.numel() * x.element_size()

    state = 2 * (size(t["ssm_state"]) + size(t["state_scale"]) + size(t["conv_state"]))
    io = size(t["zxbcdt"]) + t["zxbcdt"].shape[0] * t["ssm_state"].shape[1] * t["headdim"] * t["zxbcdt"].element_size()
    return {"state_bytes": state, "io_bytes": io}


def time_decode_kernels(batch: int, nheads: int, dtype: torch.dtype = torch.bfloat16, *, p: int = 64, n: int = 128,
                        reps: int = 50, warmup: int = 3, rounds: int = 5, device: torch.device | str = "cuda",
                        bandwidth: float | None = None, states: tuple[str, ...] = ("bf16", "int8", "fp32"),
                        kernels: tuple[str, ...] = ("two-launch", "one-launch")) -> list[dict]:
    """Median ms of one layer's decode step per (state dtype, kernel), timed interleaved over ``rounds``.

    Each round times every (state, kernel) pair once (median of ``reps`` replays of a CUDA
    graph of 20 steps, as the sampler replays its step; eager, one step's launches cost
    more than its kernels at these sizes, which an earlier tile sweep measured); a row
    reports the median over rounds and its spread, the bytes the step must move, the
    achieved state bandwidth and, given the copy bandwidth, the fraction of it.
    """
    from avgkit_mamba.ops.dispatch import decode_step

    problems = {(s, k): _decode_step_problem(batch, nheads, s, dtype, p=p, n=n, device=device)
                for s in states for k in kernels}
    replays = {key: replayed(lambda t=t, k=key[1]: decode_step(**t, impl="triton", kernel=k), device)
               for key, t in problems.items()}
    times: dict[tuple, list[float]] = {key: [] for key in problems}
    for _ in range(rounds):
        for key, replay in replays.items():
            times[key].append(graph_ms(replay, device, warmup, reps))
    return [{"batch": batch, "nheads": nheads, "state": state, "kernel": kernel,
             **_timing_fields(ts, problems[(state, kernel)], bandwidth)} for (state, kernel), ts in times.items()]


def _timing_fields(ts: list[float], problem: dict, bandwidth: float | None) -> dict:
    """A decode-step timing row's numbers: median ms over rounds and spread, bytes moved, state bandwidth and,
    given the copy bandwidth, the fraction of it."""
    ms = sorted(ts)[len(ts) // 2]
    b = state_bytes(problem)
    row = {"ms": round(ms, 4), "spread_ms": [round(min(ts), 4), round(max(ts), 4)], "rounds": len(ts), **b,
           "state_GB_s": round(b["state_bytes"] / ms / 1e6, 1)}
    if bandwidth:
        row["fraction_of_copy_bandwidth"] = round(b["state_bytes"] / (ms / 1e3) / bandwidth, 3)
    return row


def _tile_candidates() -> list:
    """The state-update kernel's work splits ``--tiles`` times: one head a program (head-dim blocks, warps,
    streaming), the same with the conv in its own launch (``preconv``), and two of several heads a program with
    the loop over them pipelined (measured slower in the sampler, docs/benchmarks.md)."""
    from avgkit_mamba.ops.triton_step import StepTile

    return ([StepTile(bp, w, 1, st) for bp in (16, 32, 64) for w in (4, 8) for st in (False, True)]
            + [StepTile(bp, w, 1, False, 1, True) for bp in (16, 32, 64) for w in (4, 8)]
            + [StepTile(bp, 8, 4, False, 2) for bp in (16, 32)])


def time_decode_tiles(batch: int, nheads: int, dtype: torch.dtype = torch.bfloat16, *, p: int = 64, n: int = 128,
                      layers: int = 24, reps: int = 10, warmup: int = 3, rounds: int = 3,
                      device: torch.device | str = "cuda", bandwidth: float | None = None,
                      states: tuple[str, ...] = ("bf16", "int8"), tiles: list | None = None) -> list[dict]:
    """The two-launch decode step of ``layers`` layers, each with its own state (as the sampler streams 24 layers'
    states from memory: one layer's state can sit in L2 and flatter a tile), per (state dtype, work split), timed
    interleaved in CUDA graphs. Each split is also checked against the torch step on one fresh layer."""
    from avgkit_mamba.ops import triton_step
    from avgkit_mamba.ops.dispatch import decode_step

    tiles = tiles if tiles is not None else _tile_candidates()
    rules = {st: triton_step._tile(batch * nheads, p, st == "int8") for st in states}
    stacks = {st: [_decode_step_problem(batch, nheads, st, dtype, p=p, n=n, device=device, seed=i)
                   for i in range(layers)] for st in states}
    keys = [(st, tile) for st in states for tile in tiles if tile.block_p <= p]
    times: dict[tuple, list[float]] = {key: [] for key in keys}
    errs: dict[tuple, float] = {}

    def all_layers(st: str) -> None:
        for t in stacks[st]:
            decode_step(**t, impl="triton", kernel="two-launch")

    replays = {}
    for st, tile in keys:
        with triton_step.split_rule(lambda rows, hd, quant, tile=tile: tile):
            fresh = _decode_step_problem(batch, nheads, st, dtype, p=p, n=n, device=device)
            ours, ref = _clone_problem(fresh), _reference_problem(fresh)
            decode_step(**ours, impl="triton", kernel="two-launch")
            decode_step(**ref, impl="torch")
            errs[(st, tile)] = rel_err(_state_values(ours), _state_values(ref))
            replays[(st, tile)] = replayed(lambda st=st: all_layers(st), device, calls=4)  # the split is captured
    for _ in range(rounds):
        for key, replay in replays.items():
            times[key].append(graph_ms(replay, device, warmup, reps, calls=4) / layers)
    return [{"batch": batch, "nheads": nheads, "layers": layers, "state": st, **tile._asdict(),
             "rule": tile == rules[st], **_timing_fields(ts, stacks[st][0], bandwidth),
             "state_rel_err": errs[(st, tile)]}
            for (st, tile), ts in times.items()]


def copy_bandwidth(gib: float = 2.0) -> float:
    """Device copy bandwidth in bytes/s, read + write counted (as benchmarks/common.py measures it)."""
    n = int(gib * 2**30) // 4
    src = torch.empty(n, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), "cuda", 3, 10)
    return 2 * n * 4 / (ms / 1e3)


def check_mixer(dtype: torch.dtype, *, d_model: int = 768, batch: int = 4, length: int = 64, prefill: int = 40,
                device: torch.device | str = "cuda", **mixer_options) -> list[dict]:
    """Mamba2Mixer(768) on the GPU: triton vs torch forward/backward, then prefill + steps vs forward."""
    from avgkit_mamba.mixer import Mamba2Mixer

    torch.manual_seed(0)
    m = Mamba2Mixer(d_model, impl="triton", **mixer_options).to(device)
    x = torch.randn(batch, length, d_model, device=device)
    amp = torch.device(device).type
    rows = []
    outs = {}
    for impl in ("triton", "torch"):
        m.impl = impl
        m.zero_grad()
        with torch.autocast(amp, dtype=dtype, enabled=dtype != torch.float32):
            y = m(x)
        y.float().square().mean().backward()
        outs[impl] = (y.detach().float(), {k: p.grad.detach().clone() for k, p in m.named_parameters()})
    (y1, g1), (y2, g2) = outs["triton"], outs["torch"]
    pairs = [("y", y1, y2)] + [(f"d {k}", g1[k], g2[k]) for k in g2]
    m.impl = "triton"
    with torch.no_grad(), torch.autocast(amp, dtype=dtype, enabled=dtype != torch.float32):
        state = m.allocate_state(batch, device=device)
        parts = [m(x[:, :prefill], state)] + [m.step(x[:, t], state)[:, None] for t in range(prefill, length)]
    pairs.append(("prefill+steps vs forward", torch.cat(parts, 1).float(), y1))
    for key, got, want in pairs:
        err = rel_err(got, want)
        tol = TOL[dtype] * (3 if key.startswith("d ") and dtype != torch.float32 else 1)
        rows.append({"case": f"Mamba2Mixer({d_model}) b{batch} l{length}", "dtype": str(dtype).removeprefix("torch."),
                     "tensor": key, "rel_err": err, "tol": tol, "ok": err <= tol, "first_call_s": None})
    return rows


def check_backbone_decode(dtype: torch.dtype, steps: int = 48, *, preset: str = "aim-b", n_layer: int = 4,
                          batch: int = 32, vocab: int = 16384, device: torch.device | str = "cuda",
                          state_dtype: str = "fp32", step_kernel: str = "two-launch",
                          decode_form: str = "recurrent") -> list[dict]:
    """A 4-layer d768 AiM (adaLN-group 2) decoding with the fused Triton path vs the PyTorch ops (same state)."""
    from avgkit.plugins import get_registry

    reg = get_registry()
    spec, cspec = reg.get("backbone", "mamba2"), reg.get("conditioner", "adaln-group")
    torch.manual_seed(0)
    bb = spec.factory(spec.resolve(preset, {"n_layer": n_layer, "vocab_size": vocab, "num_tokens": steps + 1,
                                            "state_dtype": state_dtype, "step_kernel": step_kernel,
                                            "decode_form": decode_form}))
    cond_mod = cspec.factory(cspec.resolve(None, {"num_classes": 1000, "groups": 2}), dim=bb.dim, num_layers=n_layer)
    with torch.no_grad():
        for prm in cond_mod.parameters():
            prm.add_(torch.randn_like(prm) * 0.02)
    bb, cond_mod = bb.to(device).to(dtype).eval(), cond_mod.to(device).to(dtype).eval()
    labels = torch.arange(batch, device=device)
    codes = torch.randint(0, vocab, (batch, steps + 1), device=device)
    logits = {}
    with torch.no_grad():
        cond = cond_mod(labels)
        for impl in ("triton", "torch"):
            for blk in bb.layers:
                blk.mixer.impl = impl
            state = bb.init_state(batch)
            out = [bb.prefill(state, cond)] + [bb.step(state, codes[:, k], cond) for k in range(steps)]
            logits[impl] = torch.stack(out, 1).float()
    err = rel_err(logits["triton"], logits["torch"])
    agree = (logits["triton"].argmax(-1) == logits["torch"].argmax(-1)).float().mean().item()
    tol = 3 * TOL[dtype] * (10 if state_dtype == "int8" else 1)  # int8: one quantum may round either way
    case = f"AiM d{bb.dim}x{n_layer} decode, {steps} steps" + (
        "" if (state_dtype, step_kernel) == ("fp32", "two-launch") else f", {state_dtype} state, {step_kernel}") + (
        "" if decode_form == "recurrent" else f", {decode_form} form")
    d = str(dtype).removeprefix("torch.")
    return [{"case": case, "dtype": d, "tensor": "logits", "rel_err": err, "tol": tol, "ok": err <= tol,
             "first_call_s": None},
            {"case": case, "dtype": d, "tensor": "1 - top1 agree", "rel_err": 1 - agree, "tol": 0.01,
             "ok": 1 - agree <= 0.01, "first_call_s": None}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON report path")
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer cases")
    parser.add_argument("--repeat-only", action="store_true",
                        help="only the repeat checks: is each scan stage bitwise the same across calls")
    parser.add_argument("--tiles", action="store_true",
                        help="only the state-update work-split sweep (bf16 and int8 states, 24 layers, 32 and 128 "
                             "sequences)")
    parser.add_argument("--tile-splits", default=None, metavar="SPLITS",
                        help="--tiles: comma-separated splits to time instead of the default candidates "
                             "(BLOCK_PxWARPS[:stream][:hN][:sN][:pc][:rN], triton_step.StepTile.parse)")
    parser.add_argument("--tile-states", default="bf16,int8", help="--tiles: comma-separated state dtypes")
    parser.add_argument("--decode", action="store_true",
                        help="only the decode checks: step kernels against PyTorch and AiM layers decoding with the "
                             "int8 state and the chunked form (bf16 model)")
    parser.add_argument("--step-only", metavar="STATE", default=None,
                        help="only run the two-launch decode step of 24 layers with a STATE (bf16, int8) state at "
                             "--step-batch sequences, five times, checks and timing left out: a process for an "
                             "external profiler (ncu -k regex:_step_kernel)")
    parser.add_argument("--step-batch", type=int, default=128, help="sequences for --step-only (default 128)")
    parser.add_argument("--step-split", default=None, metavar="SPLIT",
                        help="--step-only: this split of the state update instead of the rule's (StepTile.parse, "
                             "e.g. 32x4:pc:dn:r64:w)")
    parser.add_argument("--step-form", choices=("recurrent", "chunked"), default="recurrent",
                        help="--step-only: the recurrent state update or the chunked form's step (ncu -k "
                             "regex:_window_step_kernel)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated torch dtypes")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny fp32 shapes on the CPU, Triton interpreted: checks that the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":  # main(argv) called in-process without --smoke in sys.argv
            print("--smoke needs TRITON_INTERPRET=1 set before Triton is imported", file=sys.stderr)
            return 2
        args.dtypes = "float32"  # the interpreter's reduced-precision arithmetic is not the GPU's
    elif not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # an exact fp32 reference
    torch.backends.cudnn.allow_tf32 = False
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    layer = SMOKE_LAYER if args.smoke else {"nheads": 24, "p": 64, "n": 128}
    rows: list[dict] = []
    if args.step_only:
        from avgkit_mamba.ops import triton_step
        from avgkit_mamba.ops.dispatch import decode_step_deferred, window_step_deferred

        split = triton_step.StepTile.parse(args.step_split) if args.step_split else None

        batch = 2 if args.smoke else args.step_batch
        stack = [_decode_step_problem(batch, layer["nheads"], args.step_only,
                                      torch.float32 if args.smoke else torch.bfloat16, p=layer["p"], n=layer["n"],
                                      device=device, seed=i) for i in range(2 if args.smoke else 24)]
        length = torch.zeros(1, dtype=torch.long, device=device)  # the chunked form's tokens since prefill
        # the chunked form's window of 16, its caches as the backbone allocates them (none for the recurrent form)
        caches = [(torch.randn(batch, 16, layer["nheads"], layer["p"], device=device).to(t["zxbcdt"].dtype),
                   torch.randn(batch, 16, 1, layer["n"], device=device).to(t["zxbcdt"].dtype),
                   torch.rand(batch, 16, layer["nheads"], device=device) * 0.1,
                   -torch.rand(batch, 16, layer["nheads"], device=device)) if args.step_form == "chunked" else ()
                  for t in stack]
        for _ in range(5):  # as the backbone calls them: the norm deferred to the block boundary
            for t, window in zip(stack, caches, strict=True):
                if args.step_form == "chunked":
                    window_step_deferred(t["zxbcdt"], t["conv_state"], t["conv_weight"], t["conv_bias"],
                                         t["ssm_state"], t["state_scale"], *window, length, t["A_log"], t["D"],
                                         t["dt_bias"], t["norm_weight"], t["norm_eps"], t["ngroups"], impl="triton")
                else:
                    with triton_step.split_rule(None if split is None else lambda rows, hd, quant: split):
                        decode_step_deferred(**t, impl="triton", kernel="two-launch")
            length.add_(1)
        synchronize(device)
        print(f"ran {5 * len(stack)} decode steps ({args.step_only} state, {args.step_form} form)")
        return 0
    if args.tiles:
        bandwidth = None if args.smoke else copy_bandwidth()
        if args.smoke:
            from avgkit_mamba.ops.triton_step import StepTile

            sweep = time_decode_tiles(2, dtype=torch.float32, layers=2, reps=1, warmup=0, rounds=1, device=device,
                                      tiles=[StepTile(8, 1), StepTile(16, 2, 2, True, 2)], **layer)
        else:
            from avgkit_mamba.ops.triton_step import StepTile

            tiles = [StepTile.parse(t) for t in args.tile_splits.split(",")] if args.tile_splits else None
            sweep = [r for b in (32, 128) for r in time_decode_tiles(b, 24, bandwidth=bandwidth, tiles=tiles,
                                                                     states=tuple(args.tile_states.split(",")))]
        for r in sweep:
            print(f"tile {r}", flush=True)
        return _write_report(args, rows, [], sweep, bandwidth, device)
    if args.decode:
        rows += check_decode_kernels(2 if args.smoke else 16, layer["nheads"], torch.bfloat16, iters=2,
                                     device=device, p=layer["p"], n=layer["n"])
        rows += check_decode_kernels(2 if args.smoke else 16, layer["nheads"], torch.bfloat16, iters=2,
                                     device=device, p=layer["p"], n=layer["n"], states=("bf16", "int8"),
                                     kernels=("two-launch",), other_conv=True)
        for other_conv in (False, True):
            rows += check_decode_kernels(2 if args.smoke else 16, layer["nheads"], torch.bfloat16, iters=2,
                                         device=device, p=layer["p"], n=layer["n"], states=("bf16", "int8"),
                                         kernels=("two-launch",), other_conv=other_conv, deferred=True)
            for deferred in (False, True):  # the int8 state bytewise (the rule's words: the checks above)
                rows += check_decode_kernels(2 if args.smoke else 16, layer["nheads"], torch.bfloat16, iters=2,
                                             device=device, p=layer["p"], n=layer["n"], states=("int8",),
                                             kernels=("two-launch",), other_conv=other_conv, deferred=deferred,
                                             words=False)
        decode = SMOKE_DECODE if args.smoke else {}
        for state_dtype, form, kernel in (("bf16", "recurrent", "two-launch"), ("int8", "recurrent", "two-launch"),
                                          ("bf16", "chunked", "two-launch"), ("int8", "chunked", "two-launch"),
                                          ("bf16", "recurrent", "fused-in-proj"), ("int8", "recurrent", "fused-in-proj")):
            rows += check_backbone_decode(torch.bfloat16 if not args.smoke else torch.float32, device=device,
                                          state_dtype=state_dtype, decode_form=form, step_kernel=kernel, **decode)
        _print_rows(rows)
        return _write_report(args, rows, [], [], None, device)
    for dtype in dtypes:  # first: a difference here explains irreproducible samples
        for c in repeat_cases(args.smoke):
            rows += check_repeat(c, dtype, device)
    for r in rows:
        print(f"{r['case']:<36} {r['dtype']:<9} {r['tensor']:<28} {'same' if r['ok'] else r['diff']}", flush=True)
    if args.repeat_only:
        return _write_report(args, rows, [], [], None, device)
    for dtype in dtypes:
        for c in cases(args.quick, args.smoke):
            t0 = time.perf_counter()
            rows += check_scan(c, dtype, device)
            print(f"checked {c.name} {dtype} in {time.perf_counter() - t0:.1f} s", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if args.smoke:
            rows += check_step(2, iters=1, dtype=dtype, device=device, **layer)
            rows += check_decode_kernels(2, iters=2, dtype=dtype, device=device, **layer)
            if dtype == torch.float32:  # and a bf16 model's step: its reference rounding once hid behind fp32
                rows += check_decode_kernels(2, iters=2, dtype=torch.bfloat16, device=device, **layer)
            rows += check_mixer(dtype, device=device, **SMOKE_MIXER)
            rows += check_backbone_decode(dtype, device=device, **SMOKE_DECODE)
            rows += check_backbone_decode(dtype, device=device, state_dtype="int8", step_kernel="one-launch",
                                          **SMOKE_DECODE)
            rows += check_backbone_decode(dtype, device=device, state_dtype="int8", decode_form="chunked",
                                          **SMOKE_DECODE)
        else:
            rows += check_step(16 if args.quick else 128, 24, dtype)
            rows += check_decode_kernels(16 if args.quick else 128, 24, dtype)
            rows += check_mixer(dtype)
            rows += check_backbone_decode(dtype)
            for state_dtype, kernel in (("int8", "two-launch"), ("bf16", "one-launch"), ("int8", "one-launch"),
                                        ("bf16", "fused-in-proj"), ("int8", "fused-in-proj")):
                rows += check_backbone_decode(dtype, state_dtype=state_dtype, step_kernel=kernel)
            for state_dtype in ("fp32", "bf16", "int8"):  # the chunked form: 48 steps fold three times
                rows += check_backbone_decode(dtype, state_dtype=state_dtype, decode_form="chunked")
    _print_rows(rows)

    if args.smoke:
        step_timing = [time_step(2, dtype=d, reps=1, warmup=0, device=device, **layer) for d in dtypes]
    else:
        step_timing = [time_step(128, 24, d) for d in dtypes] + [
            time_step(b, 24, torch.bfloat16, ssm_dtype=torch.bfloat16) for b in (32, 128, 512)]
    for s in step_timing:
        print(f"decode step {s}")
    # the decode-step kernels compared in one process: bytes moved, bandwidth, fraction of the copy bandwidth
    bandwidth = None if args.smoke else copy_bandwidth()
    if args.smoke:
        kernel_timing = time_decode_kernels(2, dtype=torch.float32, reps=1, warmup=0, rounds=2, device=device,
                                            **layer)
    else:
        print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write)", flush=True)
        kernel_timing = [r for b in (32, 128, 512) for r in time_decode_kernels(b, 24, bandwidth=bandwidth)]
    for s in kernel_timing:
        print(f"decode kernels {s}")
    return _write_report(args, rows, step_timing, kernel_timing, bandwidth, device)


def _print_rows(rows: list[dict]) -> None:
    print(f"{'case':<36} {'dtype':<9} {'tensor':<16} {'rel err':>9} {'tol':>7}  ok")
    for r in rows:
        print(f"{r['case']:<36} {r['dtype']:<9} {r['tensor']:<16} {r['rel_err']:>9.2e} {r['tol']:>7.0e}  "
              f"{'yes' if r['ok'] else 'NO'}")


def _write_report(args, rows: list[dict], step_timing: list, kernel_timing: list, bandwidth: float | None,
                  device: torch.device) -> int:
    import triton

    report = {
        "step_timing": step_timing,
        "decode_kernel_timing": kernel_timing,
        "copy_bandwidth_Bps": bandwidth,
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "none (CPU smoke run, Triton interpreted)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "all_ok": all(r["ok"] for r in rows),
        "checks": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{sum(r['ok'] for r in rows)}/{len(rows)} checks passed; wrote {args.out}")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
