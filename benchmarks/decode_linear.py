"""A decoding step's projections against their weights' floor: cuBLAS and the alternatives.

AiM-B's decode step reads 24 layers' ``in_proj`` (768 -> 3352) and ``out_proj`` (1536 -> 768)
weights once per token, for 2 x batch rows (CFG). On an H100 these GEMMs ran at about a
quarter of their weights' floor in the sampler's profile (0.24 ms a step at batch 16 against
0.06 ms), so this script times them alone, with 24 layers' distinct weights (180 MB, more
than L2 holds, as in the sampler), replayed from a CUDA graph, for each candidate:

* ``cublas``: ``F.linear`` (what the model runs);
* ``cublaslt``: the same with ``torch.backends.cuda.preferred_blas_library("cublaslt")``;
* ``triton BMxBNxBKxSTAGESxWARPS``: one program per (row block, column block) looping over
  K with its loads pipelined, so each weight tile is read once per row block.

Then ``out_proj`` of the mixer's normalised output: the grouped-norm kernel and cuBLAS (two
launches, as the step runs them) against one Triton launch with the norm folded into the K loop;
and ``in_proj`` with the causal conv of this token: cuBLAS and the conv's own kernel against one
Triton launch with the conv in the GEMM's epilogue.

Per candidate and shape: microseconds per projection, the weights' bytes over that time as a
fraction of the copy bandwidth measured in the run, and the largest difference from an fp32
``F.linear`` (relative to its largest value).

    python benchmarks/decode_linear.py --out decode_linear.json [--rows 32,128] [--configs 32x32x128x4x4]
    python benchmarks/decode_linear.py --smoke --out FILE   # tiny shapes on the CPU, Triton interpreted
"""

from __future__ import annotations

import argparse
import os
import sys

if "--smoke" in sys.argv:  # the Triton interpreter must be chosen before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from common import (  # noqa: E402
    add_smoke_flag,
    copy_bandwidth,
    device_for,
    graph_ms,
    rel_diff,
    smoke_out,
    write_result,
)

#: AiM-B's projections: (out features, in features)
SHAPES = {"in_proj": (3352, 768), "out_proj": (768, 1536)}
SMOKE_SHAPES = {"in_proj": (40, 32), "out_proj": (32, 24)}
LAYERS = 24
#: in_proj's conv channels (x, B, C): first column and width (AiM-B: after z's 1536, 1536 + 2 x 128), smoke or not
CONV_CHANNELS = {False: (1536, 1792), True: (16, 16)}
#: BLOCK_M x BLOCK_N x BLOCK_K x STAGES x WARPS (BLOCK_M 0: the rows rounded up to a power of two, 16 to 128)
CONFIGS = "0x16x128x4x4,0x32x128x4x4,0x32x64x5x4,0x64x64x4x4,0x16x256x3x4,64x32x128x3x4,32x16x128x4x4"
SMOKE_CONFIGS = "0x16x16x2x4"


@triton.jit
def _product(x_ptr, w_ptr, offs_m, offs_n, M, N, K, s_xm, s_wn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    """sum_k x[m, k] w[n, k] for rows ``offs_m`` and columns ``offs_n``, fp32, the K loop's loads pipelined."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        offs_k = k + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * s_xm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        w = tl.load(w_ptr + offs_n[:, None] * s_wn + offs_k[None, :],
                    mask=(offs_n[:, None] < N) & (offs_k[None, :] < K), other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    return acc


@triton.jit
def _linear_kernel(x_ptr, w_ptr, y_ptr, M, N, K, s_xm, s_wn, s_ym,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    """y[m, n] = sum_k x[m, k] w[n, k] for one (row block, column block), fp32 accumulation."""
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = _product(x_ptr, w_ptr, offs_m, offs_n, M, N, K, s_xm, s_wn, BLOCK_M, BLOCK_N, BLOCK_K, STAGES)
    tl.store(y_ptr + offs_m[:, None] * s_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _norm_linear_kernel(y_ptr, nw_ptr, w_ptr, out_ptr, M, N, K, eps, s_ym, s_wn, s_om,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    """out = rmsnorm(y) * nw @ w.T with the norm folded in (one group): each program sums its rows' squares along
    the K loop it runs anyway and scales its fp32 accumulator once at the end, so no launch normalises y first."""
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    squares = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        offs_k = k + tl.arange(0, BLOCK_K)
        y = tl.load(y_ptr + offs_m[:, None] * s_ym + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0).to(tl.float32)
        squares += tl.sum(y * y, axis=1)
        nw = tl.load(nw_ptr + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs_n[:, None] * s_wn + offs_k[None, :],
                    mask=(offs_n[:, None] < N) & (offs_k[None, :] < K), other=0.0)
        acc = tl.dot((y * nw[None, :]).to(w.dtype), tl.trans(w), acc)
    acc *= tl.rsqrt(squares / K + eps)[:, None]
    tl.store(out_ptr + offs_m[:, None] * s_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _conv_linear_kernel(x_ptr, w_ptr, y_ptr, conv_ptr, cw_ptr, xc_ptr, M, N, K, conv_lo, conv_hi,
                        s_xm, s_wn, s_ym, s_cs_b, s_cs_c, s_cs_w, s_xc,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
                        W: tl.constexpr):
    """``in_proj`` with the causal conv folded in: y = x @ w.T (stored in y's dtype), and for a column block in
    the conv's channels [conv_lo, conv_hi) also conv + SiLU of this token into ``xc`` (fp32) and the windows
    shifted in place (no bias: AiM's conv has none). Column blocks never straddle the range's ends."""
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    n0 = tl.program_id(0) * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    acc = _product(x_ptr, w_ptr, offs_m, offs_n, M, N, K, s_xm, s_wn, BLOCK_M, BLOCK_N, BLOCK_K, STAGES)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    new = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs_m[:, None] * s_ym + offs_n[None, :], new, mask=mask)
    if (n0 >= conv_lo) & (n0 < conv_hi):
        ch = offs_n - conv_lo
        win = conv_ptr + offs_m[:, None] * s_cs_b + ch[None, :] * s_cs_c
        tl.static_assert(W == 4, "the prototype is written for AiM's four-tap conv")
        o1 = tl.load(win + s_cs_w, mask=mask, other=0.0)
        o2 = tl.load(win + 2 * s_cs_w, mask=mask, other=0.0)
        o3 = tl.load(win + 3 * s_cs_w, mask=mask, other=0.0)
        conv = (o1.to(tl.float32) * tl.load(cw_ptr + ch * W).to(tl.float32)[None, :]
                + o2.to(tl.float32) * tl.load(cw_ptr + ch * W + 1).to(tl.float32)[None, :]
                + o3.to(tl.float32) * tl.load(cw_ptr + ch * W + 2).to(tl.float32)[None, :]
                + new.to(tl.float32) * tl.load(cw_ptr + ch * W + 3).to(tl.float32)[None, :])
        tl.store(xc_ptr + offs_m[:, None] * s_xc + ch[None, :], conv * tl.sigmoid(conv), mask=mask)
        tl.debug_barrier()  # every old window read before one is overwritten
        tl.store(win, o1, mask=mask)
        tl.store(win + s_cs_w, o2, mask=mask)
        tl.store(win + 2 * s_cs_w, o3, mask=mask)
        tl.store(win + 3 * s_cs_w, new, mask=mask)


def _launch_tiled(kernel, config: tuple[int, ...], m: int, n: int, *args, **constexprs) -> None:
    """``kernel`` over (column block, row block) programs of ``config`` (BLOCK_M 0: the rows rounded up to a power
    of two, 16 to 128)."""
    bm, bn, bk, stages, warps = config
    bm = bm or min(128, max(16, triton.next_power_of_2(m)))
    kernel[(triton.cdiv(n, bn), triton.cdiv(m, bm))](*args, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, STAGES=stages,
                                                      num_warps=warps, **constexprs)


def triton_conv_linear(x, w, config, out, conv_state, conv_weight, xc, conv_lo):
    m, k = x.shape
    n = w.shape[0]
    _launch_tiled(_conv_linear_kernel, config, m, n, x, w, out, conv_state, conv_weight, xc, m, n, k, conv_lo,
                  conv_lo + conv_state.shape[1], x.stride(0), w.stride(0), out.stride(0), *conv_state.stride(),
                  xc.stride(0), W=conv_state.shape[-1])
    return out


def triton_norm_linear(y: torch.Tensor, nw: torch.Tensor, w: torch.Tensor, config: tuple[int, ...],
                       out: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    m, k = y.shape
    n = w.shape[0]
    _launch_tiled(_norm_linear_kernel, config, m, n, y, nw, w, out, m, n, k, eps, y.stride(0), w.stride(0),
                  out.stride(0))
    return out


def triton_linear(x: torch.Tensor, w: torch.Tensor, config: tuple[int, ...], out: torch.Tensor) -> torch.Tensor:
    m, k = x.shape
    n = w.shape[0]
    _launch_tiled(_linear_kernel, config, m, n, x, w, out, m, n, k, x.stride(0), w.stride(0), out.stride(0))
    return out


def _time_layers(cands: dict, device: torch.device, warmup: int, reps: int, error, label: str, reset=None,
                 extra=None) -> dict:
    """Each candidate ``call(i)`` (layer ``i``): once on layer 0 for ``error()`` (after ``reset()``), then every
    layer replayed from a CUDA graph; microseconds a layer (``extra(ms)`` adds fields). A config the card cannot
    run (shared memory) is reported, not fatal."""
    result = {}
    for name, call in cands.items():
        if reset is not None:
            reset()
        try:
            call(0)
            err = error()
            ms = graph_ms(lambda call=call: [call(i) for i in range(LAYERS)], device, warmup, reps) / LAYERS
        except Exception as exc:
            result[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
            continue
        result[name] = {"us": round(ms * 1e3, 2), "max_rel_err": err, **(extra(ms) if extra else {})}
        print(f"{label} {name}: {result[name]}", flush=True)
    return result


def measure(rows: int, n: int, k: int, candidates: dict, device: torch.device, dtype: torch.dtype,
            warmup: int, reps: int, copy_bw: float | None) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    xs = [torch.randn(rows, k, generator=g, device=device).to(dtype) for _ in range(LAYERS)]
    ws = [(torch.randn(n, k, generator=g, device=device) / k ** 0.5).to(dtype) for _ in range(LAYERS)]
    outs = [torch.empty(rows, n, device=device, dtype=dtype) for _ in range(LAYERS)]
    want = F.linear(xs[0].float(), ws[0].float())
    weight_bytes = n * k * ws[0].element_size()
    cands = {name: lambda i, call=call: call(xs[i], ws[i], outs[i]) for name, call in candidates.items()}
    return _time_layers(cands, device, warmup, reps, lambda: rel_diff(outs[0], want), f"rows {rows} {n}x{k}",
                        extra=lambda ms: {"of_copy_bandwidth": round(weight_bytes / (ms / 1e3) / copy_bw, 3)}
                        if copy_bw else {})


def measure_conv(rows: int, n: int, k: int, conv_lo: int, channels: int, configs: str, proj_tiles: str,
                 device: torch.device, dtype: torch.dtype, warmup: int, reps: int) -> dict:
    """``in_proj`` and the causal conv of this token: cuBLAS then the conv's own kernel (``launch_preconv``, two
    launches, each head's dt and decay with it) against one Triton launch with the conv folded into the GEMM's
    epilogue: the first prototype (its taps read after the K loop, no dt) and the library's kernel
    (``triton_in_proj``: taps, weights, dt's bias and A read before the K loop, dt and decay in the epilogue; its
    rule's tiling and each of ``proj_tiles``), over 24 layers, each with its own conv windows; ``max_rel_err`` compares the conv's output with PyTorch's
    from the same windows."""
    from avgkit_mamba.ops.triton_in_proj import ProjTile, in_proj_conv_triton, proj_tile
    from avgkit_mamba.ops.triton_step import launch_preconv

    g = torch.Generator(device=device).manual_seed(2)
    nheads = n - conv_lo - channels
    xs = [torch.randn(rows, k, generator=g, device=device).to(dtype) for _ in range(LAYERS)]
    ws = [(torch.randn(n, k, generator=g, device=device) / k ** 0.5).to(dtype) for _ in range(LAYERS)]
    cws = [(torch.randn(channels, 4, generator=g, device=device) / 2).to(dtype) for _ in range(LAYERS)]
    convs = [torch.randn(rows, channels, 4, generator=g, device=device).to(dtype) for _ in range(LAYERS)]
    dt_bias = [torch.randn(nheads, generator=g, device=device).to(dtype) for _ in range(LAYERS)]
    a_log = [torch.rand(nheads, generator=g, device=device).to(dtype) for _ in range(LAYERS)]
    outs = [torch.empty(rows, n, device=device, dtype=dtype) for _ in range(LAYERS)]
    xcs = [torch.empty(rows, channels, device=device) for _ in range(LAYERS)]
    first = convs[0].clone()
    new = F.linear(xs[0].float(), ws[0].float()).to(dtype)[:, conv_lo:conv_lo + channels]
    pre = (torch.cat([first[..., 1:], new[..., None]], -1).float() * cws[0].float()).sum(-1)
    want = pre * torch.sigmoid(pre)
    fused: dict[int, torch.Tensor] = {}

    def two_launches(i):
        torch.mm(xs[i], ws[i].t(), out=outs[i])
        heads = (outs[i][:, conv_lo + channels:], dt_bias[i], a_log[i], True)
        fused[i] = launch_preconv(outs[i][:, conv_lo:conv_lo + channels], convs[i], cws[i], None, heads)

    def one_launch(i, tile):
        fused[i] = in_proj_conv_triton(xs[i], ws[i], convs[i], cws[i], None, dt_bias[i], a_log[i], True, conv_lo,
                                       tile)[1]

    def prototype(i, config):
        triton_conv_linear(xs[i], ws[i], config, outs[i], convs[i], cws[i], xcs[i], conv_lo)
        fused[i] = xcs[i]

    rule = proj_tile(rows)
    cands = {"cublas + conv kernel": two_launches,
             f"triton in_proj + conv + dt, rule {'x'.join(map(str, rule[:5]))}{'' if rule.hoist else ':late'}":
                 lambda i: one_launch(i, None)}
    for spec in filter(None, proj_tiles.split(",")):
        cands[f"triton in_proj + conv + dt {spec}"] = lambda i, tile=ProjTile.parse(spec): one_launch(i, tile)
    for spec in configs.split(","):
        config = tuple(int(v) for v in spec.split("x"))
        if conv_lo % config[1] or channels % config[1]:
            continue  # a column block of the prototype would straddle the conv's channels
        cands[f"triton conv-folded prototype {spec}"] = lambda i, config=config: prototype(i, config)
    return _time_layers(cands, device, warmup, reps, lambda: rel_diff(fused[0][:, :channels], want),
                        f"rows {rows} {n}x{k} with conv", reset=lambda: convs[0].copy_(first))


def measure_norm(rows: int, n: int, k: int, configs: str, device: torch.device, dtype: torch.dtype, warmup: int,
                 reps: int) -> dict:
    """``out_proj`` of the mixer's normalised output: the grouped-norm kernel then cuBLAS (what a decoding step
    runs: two launches) against one Triton launch with the norm folded in, over 24 layers (fp32 y, as the step
    writes it)."""
    from avgkit_mamba.ops.triton_step import _launch_epilogue

    g = torch.Generator(device=device).manual_seed(1)
    ys = [torch.randn(rows, k, generator=g, device=device) for _ in range(LAYERS)]
    nws = [(1 + 0.1 * torch.randn(k, generator=g, device=device)).to(dtype) for _ in range(LAYERS)]
    ws = [(torch.randn(n, k, generator=g, device=device) / k ** 0.5).to(dtype) for _ in range(LAYERS)]
    normed = torch.empty(rows, k, device=device, dtype=dtype)
    outs = [torch.empty(rows, n, device=device, dtype=dtype) for _ in range(LAYERS)]
    unused = torch.zeros(rows, k, device=device, dtype=dtype)  # the B/C windows the epilogue leaves alone here
    want = F.linear(ys[0] * torch.rsqrt(ys[0].pow(2).mean(-1, keepdim=True) + 1e-5) * nws[0].float(), ws[0].float())

    def two_launches(i):
        _launch_epilogue(ys[i], nws[i], 1e-5, normed, unused, unused[:, :, None], 1, 0, shift_bc=False)
        torch.mm(normed, ws[i].t(), out=outs[i])

    cands = {"norm kernel + cublas": two_launches}
    for spec in configs.split(","):
        config = tuple(int(v) for v in spec.split("x"))
        cands[f"triton norm-folded {spec}"] = lambda i, config=config: triton_norm_linear(
            ys[i], nws[i], ws[i], config, outs[i])
    return _time_layers(cands, device, warmup, reps, lambda: rel_diff(outs[0], want), f"rows {rows} {n}x{k} normed")


def candidates(configs: str, cuda: bool) -> dict:
    def cublas(x, w, o):
        torch.mm(x, w.t(), out=o)

    def cublaslt(x, w, o):
        previous = torch.backends.cuda.preferred_blas_library()
        torch.backends.cuda.preferred_blas_library("cublaslt")
        try:
            torch.mm(x, w.t(), out=o)
        finally:
            torch.backends.cuda.preferred_blas_library(previous)

    out = {"cublas": cublas}
    if cuda:
        out["cublaslt"] = cublaslt
    for spec in configs.split(","):
        config = tuple(int(v) for v in spec.split("x"))
        out[f"triton {spec}"] = lambda x, w, o, config=config: triton_linear(x, w, config, o)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="32,128,512", help="comma-separated rows (2 x batch with CFG)")
    ap.add_argument("--configs", default=CONFIGS, help="comma-separated BLOCK_MxBLOCK_NxBLOCK_KxSTAGESxWARPS")
    ap.add_argument("--proj-tiles", default=None,
                    help="comma-separated tilings of the library's in_proj with the conv (triton_in_proj.ProjTile: "
                         "BLOCK_MxBLOCK_NxBLOCK_KxSTAGESxWARPS[:late]); default: each --configs tiling, early and late")
    ap.add_argument("--parts", default="plain,normed,conv",
                    help="comma-separated: plain (the projections alone), normed (out_proj with the norm), conv "
                         "(in_proj with the conv)")
    ap.add_argument("--out", default=None)
    add_smoke_flag(ap)
    args = ap.parse_args(argv)
    device = device_for(args.smoke, "decode_linear")
    shapes, configs = (SMOKE_SHAPES, SMOKE_CONFIGS) if args.smoke else (SHAPES, args.configs)
    rows = [4] if args.smoke else [int(r) for r in args.rows.split(",")]
    dtype = torch.float32 if args.smoke else torch.bfloat16
    warmup, reps = (0, 1) if args.smoke else (10, 30)
    copy_bw = None if args.smoke else copy_bandwidth()
    cands = candidates(configs, device.type == "cuda")
    parts = set(args.parts.split(","))
    if parts - {"plain", "normed", "conv"}:
        ap.error(f"unknown parts {sorted(parts - {'plain', 'normed', 'conv'})}; use plain, normed and conv")
    results = {}
    if "plain" in parts:
        results |= {f"{name} rows {r}": measure(r, n, k, cands, device, dtype, warmup, reps, copy_bw)
                    for r in rows for name, (n, k) in shapes.items()}
    if "normed" in parts:
        n, k = shapes["out_proj"]
        results |= {f"out_proj normed rows {r}": measure_norm(r, n, k, configs, device, dtype, warmup, reps)
                    for r in rows}
    if "conv" in parts:
        n, k = shapes["in_proj"]
        lo, channels = CONV_CHANNELS[args.smoke]
        tiles = args.proj_tiles if args.proj_tiles is not None else \
            ",".join(f"{c}{late}" for c in configs.split(",") for late in ("", ":late"))
        results |= {f"in_proj with conv rows {r}": measure_conv(r, n, k, lo, channels, configs, tiles, device, dtype,
                                                                 warmup, reps) for r in rows}
    fastest = {key: min((c for c in per if "us" in per[c]), key=lambda c: per[c]["us"]) for key, per in results.items()}
    report = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "none (CPU smoke run)",
              "copy_bandwidth_bytes_per_s": copy_bw, "dtype": str(dtype), "layers": LAYERS, "results": results,
              "fastest": fastest}
    print({"fastest": fastest}, flush=True)
    write_result("decode_linear", report, smoke_out("decode_linear", args.out, args.smoke), quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
