"""Triton kernels for the whole-sequence causal depthwise conv with its SiLU, forward and backward.

Same result as :func:`avgkit_mamba.ops.conv_torch.causal_conv1d` without an initial state
(training and teacher forcing), on the channels-last layout the mixer has: ``x`` is
``(b, l, d)`` with unit channel stride (a column slice of ``in_proj``'s output is taken as
it is) and ``y`` comes back contiguous ``(b, l, d)``, so neither direction transposes.

Why a kernel: under ``torch.compile`` inductor lowered the conv's backward (the SiLU's
gradient, the input gradient and the weight gradient summed over every position) to
kernels that ran at a tenth of the copy bandwidth; the shifted form and this kernel were
timed side by side in ``benchmarks/train_step.py``.

Numerics: products and sums in fp32, the weight rounded to the input dtype first (as the
PyTorch path does). The backward recomputes the pre-activation from ``x`` rather than
saving it, and runs in two passes: the activation's gradient ``g`` for every position (in
the input dtype, as PyTorch's SiLU backward leaves it) with the weight and bias gradients,
then the input gradient from ``g`` at four shifts. One pass that recomputed ``g`` at the
three positions after each one ran at a quarter of the copy bandwidth on an H100. The
weight and bias gradients are summed per block of ``PART_L`` positions into fixed slots,
then over the slots on the host: the same order on every run.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from avgkit_mamba.ops.triton_launch import INTERPRET, Launcher, row_align

__all__ = ["causal_conv_triton"]

#: The conv width the kernels take: Mamba's (``d_conv``); the dispatcher runs other widths in PyTorch.
WIDTH = 4
#: Positions a program covers (fixed, not autotuned: it sets the number of gradient slots).
PART_L = 64


@triton.jit
def _tap(row, s, s_x_l, offs_d, mask_d, seqlen):
    """x at positions ``s`` (zero outside the sequence) in fp32."""
    return tl.load(row + s[:, None] * s_x_l + offs_d[None, :],
                   mask=((s >= 0) & (s < seqlen))[:, None] & mask_d[None, :], other=0.0).to(tl.float32)


@triton.jit
def _taps(row, t, s_x_l, offs_d, mask_d, seqlen):
    """The four inputs that position ``t`` convolves: x[t-3], x[t-2], x[t-1], x[t]."""
    return (_tap(row, t - 3, s_x_l, offs_d, mask_d, seqlen), _tap(row, t - 2, s_x_l, offs_d, mask_d, seqlen),
            _tap(row, t - 1, s_x_l, offs_d, mask_d, seqlen), _tap(row, t, s_x_l, offs_d, mask_d, seqlen))


@triton.jit
def _weights(w_ptr, bias_ptr, offs_d, mask_d, HAS_BIAS: tl.constexpr, XDTYPE: tl.constexpr, BLOCK_D: tl.constexpr):
    """The four taps' weights and the bias as (1, BLOCK_D) rows, rounded to the input dtype, then fp32."""
    w0 = tl.load(w_ptr + offs_d * 4 + 0, mask=mask_d, other=0.0).to(XDTYPE).to(tl.float32)[None, :]
    w1 = tl.load(w_ptr + offs_d * 4 + 1, mask=mask_d, other=0.0).to(XDTYPE).to(tl.float32)[None, :]
    w2 = tl.load(w_ptr + offs_d * 4 + 2, mask=mask_d, other=0.0).to(XDTYPE).to(tl.float32)[None, :]
    w3 = tl.load(w_ptr + offs_d * 4 + 3, mask=mask_d, other=0.0).to(XDTYPE).to(tl.float32)[None, :]
    bias = tl.zeros((1, BLOCK_D), dtype=tl.float32)
    if HAS_BIAS:
        bias += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(XDTYPE).to(tl.float32)[None, :]
    return w0, w1, w2, w3, bias


@triton.jit
def _act_grad(dy, pre, SILU: tl.constexpr):
    if SILU:
        sig = tl.sigmoid(pre)
        return dy * sig * (1.0 + pre * (1.0 - sig))
    return dy


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, seqlen, dim, s_x_b, s_x_l,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, X_ALIGN: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Width 4: y[t] = act(bias + sum_k w[:, k] x[t-3+k])."""
    s_x_b, s_x_l = s_x_b * X_ALIGN, s_x_l * X_ALIGN
    lb = tl.program_id(0)
    db = tl.program_id(1)
    bi = tl.program_id(2).to(tl.int64)
    t = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    w0, w1, w2, w3, bias = _weights(w_ptr, bias_ptr, offs_d, mask_d, HAS_BIAS, x_ptr.dtype.element_ty, BLOCK_D)
    xm3, xm2, xm1, x0 = _taps(x_ptr + bi * s_x_b, t, s_x_l, offs_d, mask_d, seqlen)
    acc = bias + w0 * xm3 + w1 * xm2 + w2 * xm1 + w3 * x0
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + bi * seqlen * dim + t[:, None] * dim + offs_d[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(t < seqlen)[:, None] & mask_d[None, :])


@triton.jit
def _conv_grad_kernel(
    x_ptr, w_ptr, bias_ptr, dy_ptr, g_ptr, dw_ptr, db_ptr, seqlen, dim, n_parts, s_x_b, s_x_l,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, X_ALIGN: tl.constexpr, PART: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Width 4. g = dy * act'(pre) for every position, once; per-slot sums of g[t] x[t-3+k] and of g[t].

    A program covers ``PART`` positions of one sequence in blocks of ``BLOCK_L``; the weight
    and bias gradients accumulate element-wise and are reduced once at the end.
    """
    s_x_b, s_x_l = s_x_b * X_ALIGN, s_x_l * X_ALIGN
    pb = tl.program_id(0)
    db = tl.program_id(1)
    bi = tl.program_id(2).to(tl.int64)
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    x_row = x_ptr + bi * s_x_b
    w0, w1, w2, w3, bias = _weights(w_ptr, bias_ptr, offs_d, mask_d, HAS_BIAS, x_ptr.dtype.element_ty, BLOCK_D)
    acc_b = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    acc_0 = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    acc_1 = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    acc_2 = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    acc_3 = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    for l0 in range(pb * PART, tl.minimum(pb * PART + PART, seqlen), BLOCK_L):
        t = l0 + tl.arange(0, BLOCK_L)
        xm3, xm2, xm1, x0 = _taps(x_row, t, s_x_l, offs_d, mask_d, seqlen)
        rows = bi * seqlen * dim + t[:, None] * dim + offs_d[None, :]
        inside = (t < seqlen)[:, None] & mask_d[None, :]
        dy = tl.load(dy_ptr + rows, mask=inside, other=0.0).to(tl.float32)
        g = _act_grad(dy, bias + w0 * xm3 + w1 * xm2 + w2 * xm1 + w3 * x0, SILU)  # zero past the end
        tl.store(g_ptr + rows, g.to(g_ptr.dtype.element_ty), mask=inside)
        acc_b += g
        acc_0 += g * xm3
        acc_1 += g * xm2
        acc_2 += g * xm1
        acc_3 += g * x0
    slot = bi * n_parts + pb
    dw_row = dw_ptr + slot * 4 * dim + offs_d
    tl.store(dw_row, tl.sum(acc_0, axis=0), mask=mask_d)
    tl.store(dw_row + dim, tl.sum(acc_1, axis=0), mask=mask_d)
    tl.store(dw_row + 2 * dim, tl.sum(acc_2, axis=0), mask=mask_d)
    tl.store(dw_row + 3 * dim, tl.sum(acc_3, axis=0), mask=mask_d)
    if HAS_BIAS:
        tl.store(db_ptr + slot * dim + offs_d, tl.sum(acc_b, axis=0), mask=mask_d)


@triton.jit
def _conv_dx_kernel(
    g_ptr, w_ptr, dx_ptr, seqlen, dim, s_dx_b, s_dx_l, DX_ALIGN: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Width 4: dx[t] = sum_j w[:, 3-j] g[t+j] (g zero past the sequence's end)."""
    s_dx_b, s_dx_l = s_dx_b * DX_ALIGN, s_dx_l * DX_ALIGN
    lb = tl.program_id(0)
    db = tl.program_id(1)
    bi = tl.program_id(2).to(tl.int64)
    t = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    g_row = g_ptr + bi * seqlen * dim
    w0, w1, w2, w3, _ = _weights(w_ptr, w_ptr, offs_d, mask_d, False, dx_ptr.dtype.element_ty, BLOCK_D)
    dx = (w3 * _tap(g_row, t, dim, offs_d, mask_d, seqlen) + w2 * _tap(g_row, t + 1, dim, offs_d, mask_d, seqlen)
          + w1 * _tap(g_row, t + 2, dim, offs_d, mask_d, seqlen) + w0 * _tap(g_row, t + 3, dim, offs_d, mask_d, seqlen))
    tl.store(dx_ptr + bi * s_dx_b + t[:, None] * s_dx_l + offs_d[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=(t < seqlen)[:, None] & mask_d[None, :])


def _interp_meta(args: dict) -> dict:
    return {"BLOCK_L": 8, "BLOCK_D": 16, "num_warps": 4}  # two blocks per part: the loop runs


_fwd_k = Launcher(
    _conv_fwd_kernel,
    configs=[
        ({"BLOCK_L": 32, "BLOCK_D": 128}, 4, 2),
        ({"BLOCK_L": 64, "BLOCK_D": 64}, 4, 2),
        ({"BLOCK_L": 16, "BLOCK_D": 256}, 4, 2),
        ({"BLOCK_L": 64, "BLOCK_D": 128}, 8, 2),
    ],
    key=["dim", "seqlen", "HAS_BIAS", "SILU"],
    valid=lambda a, m: True,
    interp=_interp_meta,
)

_grad_k = Launcher(
    _conv_grad_kernel,
    configs=[  # the last four: the loop's loads pipelined, or no loop (a whole part in one block)
        ({"BLOCK_L": 16, "BLOCK_D": 64}, 4, 1),
        ({"BLOCK_L": 8, "BLOCK_D": 128}, 4, 1),
        ({"BLOCK_L": 16, "BLOCK_D": 128}, 8, 1),
        ({"BLOCK_L": 32, "BLOCK_D": 64}, 8, 1),
        ({"BLOCK_L": 16, "BLOCK_D": 64}, 4, 3),
        ({"BLOCK_L": 32, "BLOCK_D": 64}, 8, 2),
        ({"BLOCK_L": 64, "BLOCK_D": 32}, 4, 1),
        ({"BLOCK_L": 64, "BLOCK_D": 64}, 8, 1),
    ],
    key=["dim", "seqlen", "HAS_BIAS", "SILU"],
    valid=lambda a, m: m["BLOCK_L"] <= a["PART"],
    interp=_interp_meta,
)
_dx_k = Launcher(
    _conv_dx_kernel,
    configs=[
        ({"BLOCK_L": 32, "BLOCK_D": 128}, 4, 1),
        ({"BLOCK_L": 16, "BLOCK_D": 256}, 4, 1),
        ({"BLOCK_L": 64, "BLOCK_D": 64}, 4, 1),
        ({"BLOCK_L": 32, "BLOCK_D": 256}, 8, 1),
    ],
    key=["dim", "seqlen", "DX_ALIGN"],
    valid=lambda a, m: True,
    interp=_interp_meta,
)


def _check(x: Tensor, weight: Tensor) -> None:
    if x.dim() != 3 or x.stride(-1) != 1:
        raise ValueError(f"the Triton conv takes x (b, l, d) with unit channel stride, got shape {tuple(x.shape)} "
                         f"strides {x.stride()}")
    if weight.dim() != 2 or weight.shape[0] != x.shape[-1] or weight.shape[1] != WIDTH:
        raise ValueError(f"conv weight {tuple(weight.shape)} does not match {x.shape[-1]} channels of width {WIDTH}; "
                         f"expected (d, {WIDTH}) (other widths: impl 'torch')")


def _x_strides(x: Tensor) -> dict:
    """x's batch and position strides as multiples of ``X_ALIGN`` elements (``triton_launch.row_align``)."""
    align = row_align(x.stride(0), x.stride(1))
    return dict(s_x_b=x.stride(0) // align, s_x_l=x.stride(1) // align, X_ALIGN=align)


def _fwd(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    _check(x, weight)
    b, seqlen, dim = x.shape
    y = torch.empty(b, seqlen, dim, device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    _fwd_k(
        lambda m: (triton.cdiv(seqlen, m["BLOCK_L"]), triton.cdiv(dim, m["BLOCK_D"]), b),
        x_ptr=x, w_ptr=weight, bias_ptr=bias if bias is not None else weight, y_ptr=y, seqlen=seqlen, dim=dim,
        **_x_strides(x), HAS_BIAS=bias is not None, SILU=silu,
    )
    return y


def _bwd(dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool,
         dx: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """-> (dx, dw, db); ``dx`` (b, l, d) with unit channel stride may be given (a column slice of ``in_proj``'s
    output gradient), else it is allocated contiguous."""
    _check(x, weight)
    b, seqlen, dim = x.shape
    w = weight.shape[1]
    dy = dy.contiguous()
    part = min(PART_L, 16) if INTERPRET else PART_L
    n_parts = max(1, triton.cdiv(seqlen, part))
    if dx is None:
        dx = torch.empty(b, seqlen, dim, device=x.device, dtype=x.dtype)
    if dx.numel() == 0:
        return dx, torch.zeros_like(weight), torch.zeros_like(bias) if bias is not None else weight.new_empty(0)
    dw_slots = torch.empty(b * n_parts, w, dim, device=x.device, dtype=torch.float32)
    db_slots = torch.empty(b * n_parts, dim, device=x.device, dtype=torch.float32)
    # the activation's gradient, in the input dtype as the PyTorch path has it
    g = torch.empty(b, seqlen, dim, device=x.device, dtype=x.dtype)
    common = dict(seqlen=seqlen, dim=dim)
    _grad_k(
        lambda m: (n_parts, triton.cdiv(dim, m["BLOCK_D"]), b),
        x_ptr=x, w_ptr=weight, bias_ptr=bias if bias is not None else weight, dy_ptr=dy, g_ptr=g,
        dw_ptr=dw_slots, db_ptr=db_slots, n_parts=n_parts, **_x_strides(x),
        HAS_BIAS=bias is not None, SILU=silu, PART=part, **common,
    )
    dxa = row_align(dx.stride(0), dx.stride(1))
    _dx_k(lambda m: (triton.cdiv(seqlen, m["BLOCK_L"]), triton.cdiv(dim, m["BLOCK_D"]), b),
          g_ptr=g, w_ptr=weight, dx_ptr=dx, s_dx_b=dx.stride(0) // dxa, s_dx_l=dx.stride(1) // dxa, DX_ALIGN=dxa,
          **common)
    dw = dw_slots.sum(0).t().contiguous().to(weight.dtype)
    db = db_slots.sum(0).to(bias.dtype) if bias is not None else db_slots.new_empty(0)
    return dx, dw, db


# ----------------------------------------------------------------------------- custom ops
# Opaque to torch.compile (one graph node each way, shape-only fakes), as the scan is.

_FWD_SCHEMA = "(Tensor x, Tensor weight, Tensor? bias, bool silu) -> Tensor"
_BWD_SCHEMA = "(Tensor dy, Tensor x, Tensor weight, Tensor? bias, bool silu) -> (Tensor, Tensor, Tensor)"


@torch.library.custom_op("avgkit_mamba::causal_conv_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def _conv_fwd_op(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    return _fwd(x, weight, bias, silu)


@_conv_fwd_op.register_fake
def _(x, weight, bias, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("avgkit_mamba::causal_conv_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def _conv_bwd_op(dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _bwd(dy, x, weight, bias, silu)


@_conv_bwd_op.register_fake
def _(dy, x, weight, bias, silu):
    db = bias.new_empty(bias.shape) if bias is not None else weight.new_empty(0, dtype=torch.float32)
    return x.new_empty(x.shape), weight.new_empty(weight.shape), db


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    x, weight, bias, silu = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu = silu


def _backward(ctx: Any, dy: Tensor) -> tuple:
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = _conv_bwd_op(dy, x, weight, bias, ctx.silu)
    return dx, dw, db if bias is not None else None, None


_conv_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def causal_conv_triton(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = "silu") -> Tensor:
    """Causal depthwise conv of ``x`` (b, l, d) with ``weight`` (d, w) and ``bias`` (d,), then SiLU.

    Starts from zeros (no initial state); returns (b, l, d) contiguous in ``x.dtype``.
    Gradients flow to x, weight and bias.
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"unknown conv activation {activation!r}; use 'silu' or None")
    if x.stride(-1) != 1:
        x = x.contiguous()
    return _conv_fwd_op(x, weight.contiguous(), None if bias is None else bias.contiguous(), activation is not None)
