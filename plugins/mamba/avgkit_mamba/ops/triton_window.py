"""Triton kernel for a Mamba-2 decode step in the chunked form: the state written once a window.

One program per (batch row, head, block of head dims), as the recurrent step
(:mod:`triton_step`): it issues the read of its SSM state tile first, convolves its x
channels (shifting their window) and the group's B and C from their old windows, and
appends token ``j = length % K`` to the window caches (its x channels; dt and the running
``cum = sum dt*A`` from the window's start by the head's first program; B by the group's
first head). The output is ``exp(cum_j) (H C)`` plus the window's tokens
``sum_{s<=j} (C . B_s) exp(cum_j - cum_s) dt_s x_s``, the D skip, gated by ``silu(z)``.
Only at the window's last row does the program write its tile back, having absorbed the
window: ``H <- exp(cum_j) H + sum_s exp(cum_j - cum_s) dt_s x_s B_s^T``. So a step reads
the state and writes it once per K steps: about half the recurrent step's state traffic,
and an int8 state is dequantised on most steps and requantised once a window.

The window's earlier rows ``s < j`` are read as (K, .) tiles in one round of loads, beside
the state's (a loop over ``s`` waited a memory round trip per token, which made the step
slower than the recurrent one though it moves half the bytes); rows ``s >= j`` are masked
to weight 0. ``y`` sums over the tiles, and the fold adds ``(w x)^T B`` (P x K by K x N)
with ``tl.dot`` in fp32. Every cache row ``s < j`` a program reads was written by an earlier
launch; token ``j``'s own values come from registers, so no program depends on another
of the same launch.
The grouped RMSNorm and the shift of the shared B/C windows follow in
:mod:`triton_step`'s epilogue. Reference: :func:`avgkit_mamba.ops.ssd_torch.ssd_window_step`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from avgkit_mamba.ops.ssd_torch import split_zxbcdt
from avgkit_mamba.ops.triton_common import _conv_inputs, _dequantize_rows, _quantize_rows, _softplus
from avgkit_mamba.ops.triton_launch import INTERPRET, last_dim_contiguous
from avgkit_mamba.ops.triton_step import _check_scale, _launch_epilogue, _tile

__all__ = ["window_step_triton"]


@triton.jit
def _window_step_kernel(
    xbc_ptr, dt_ptr, z_ptr, conv_ptr, cw_ptr, cb_ptr, ssm_ptr, scale_ptr,
    cx_ptr, cbm_ptr, cdt_ptr, ccum_ptr, len_ptr,
    A_ptr, D_ptr, bias_ptr, y_ptr,
    hpg, P, N, W, K, d_inner, ngroups,
    s_xbc_b, s_dt_b, s_z_b, s_cs_b, s_cs_c, s_cs_w,
    s_ss_b, s_ss_h, s_ss_p, s_ss_n, s_sc_b, s_sc_h, s_sc_p,
    s_cx_b, s_cx_l, s_cx_h, s_cb_b, s_cb_l, s_cb_g, s_cd_b, s_cd_l, s_y_b,
    HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, QUANT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_FOLD: tl.constexpr,
):
    bi = tl.program_id(0).to(tl.int64)
    hi = tl.program_id(1)
    pb = tl.program_id(2)
    gi = hi // hpg
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_p = offs_p < P
    mask_n = offs_n < N

    # the state tile first: its latency hides behind the conv work below
    s_ptrs = ssm_ptr + bi * s_ss_b + hi * s_ss_h + offs_p[:, None] * s_ss_p + offs_n[None, :] * s_ss_n
    smask = mask_p[:, None] & mask_n[None, :]
    state = tl.load(s_ptrs, mask=smask, other=0.0)
    if QUANT:
        sc_ptrs = scale_ptr + bi * s_sc_b + hi * s_sc_h + offs_p * s_sc_p
        state = _dequantize_rows(state, tl.load(sc_ptrs, mask=mask_p, other=0.0))
    else:
        state = state.to(tl.float32)
    j = tl.load(len_ptr) % K

    # the window's earlier tokens s < j as (K, .) tiles in one round of loads (a loop over s would wait a
    # memory round trip per token), issued before the appends below: this launch writes only row j
    mask_k = offs_k < j
    bs = tl.load(cbm_ptr + bi * s_cb_b + offs_k[:, None] * s_cb_l + gi * s_cb_g + offs_n[None, :],
                 mask=mask_k[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
    xs = tl.load(cx_ptr + bi * s_cx_b + offs_k[:, None] * s_cx_l + hi * s_cx_h + offs_p[None, :],
                 mask=mask_k[:, None] & mask_p[None, :], other=0.0).to(tl.float32)
    cum_s = tl.load(ccum_ptr + bi * s_cd_b + offs_k * s_cd_l + hi, mask=mask_k, other=0.0)
    dt_s = tl.load(cdt_ptr + bi * s_cd_b + offs_k * s_cd_l + hi, mask=mask_k, other=0.0)

    dt = tl.load(dt_ptr + bi * s_dt_b + hi).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(bias_ptr + hi).to(tl.float32)
    dt = _softplus(dt)
    a = -tl.exp(tl.load(A_ptr + hi).to(tl.float32))  # A = -exp(A_log)
    cum_before = tl.load(ccum_ptr + bi * s_cd_b + tl.maximum(j - 1, 0) * s_cd_l + hi)
    cum_j = tl.where(j > 0, cum_before, 0.0) + dt * a

    x, Bv, Cv = _conv_inputs(conv_ptr + bi * s_cs_b, xbc_ptr + bi * s_xbc_b, cw_ptr, cb_ptr, s_cs_c, s_cs_w, hi, gi,
                             ngroups, P, N, W, d_inner, offs_p, mask_p, offs_n, mask_n, HAS_CONV_BIAS, BLOCK_W)

    # append token j: this program's x channels; dt and cum by the head's first program, B by the group's
    tl.store(cx_ptr + bi * s_cx_b + j * s_cx_l + hi * s_cx_h + offs_p, x.to(cx_ptr.dtype.element_ty), mask=mask_p)
    if pb == 0:
        tl.store(cdt_ptr + bi * s_cd_b + j * s_cd_l + hi, dt)
        tl.store(ccum_ptr + bi * s_cd_b + j * s_cd_l + hi, cum_j)
        if hi % hpg == 0:
            tl.store(cbm_ptr + bi * s_cb_b + j * s_cb_l + gi * s_cb_g + offs_n, Bv.to(cbm_ptr.dtype.element_ty),
                     mask=mask_n)

    w = tl.where(mask_k, tl.exp(tl.minimum(cum_j - cum_s, 0.0)) * dt_s, 0.0)  # rows s >= j weigh nothing
    carry = tl.exp(cum_j)
    y = carry * tl.sum(state * Cv[None, :], axis=1) + tl.sum(Cv * Bv, axis=0) * dt * x  # the state, then token j
    y += tl.sum((w * tl.sum(bs * Cv[None, :], axis=1))[:, None] * xs, axis=0)
    if HAS_D:
        y += tl.load(D_ptr + hi).to(tl.float32) * x
    zz = tl.load(z_ptr + bi * s_z_b + hi * P + offs_p, mask=mask_p, other=0.0).to(tl.float32)
    tl.store(y_ptr + bi * s_y_b + hi * P + offs_p, y * zz * tl.sigmoid(zz), mask=mask_p)

    if j == K - 1:  # the window's last row: the state absorbs the window, once every K steps
        folded = carry * state + (dt * x)[:, None] * Bv[None, :]
        wx = tl.trans(w[:, None] * xs)  # (P, K): the earlier tokens' dt_s x_s, decayed to token j
        if DOT_FOLD:  # in fp32 onto the state, the tokens in order (ieee: no tf32 rounding)
            folded = tl.dot(wx, bs, acc=folded, input_precision="ieee")
        else:  # a head-dim or state tile under 16, too small for tl.dot
            folded += tl.sum(wx[:, :, None] * bs[None, :, :], axis=1)
        if QUANT:
            q, new_scale = _quantize_rows(folded)
            tl.store(s_ptrs, q, mask=smask)
            tl.store(sc_ptrs, new_scale, mask=mask_p)
        else:
            tl.store(s_ptrs, folded.to(ssm_ptr.dtype.element_ty), mask=smask)


def window_tile(rows: int, p: int, interpret: bool) -> tuple[int, int]:
    """(head dims a program, warps) of the window kernel for ``rows`` (batch x heads) tiles of ``p`` head dims: the
    recurrent step's rule (``triton_step._tile``), small tiles under the interpreter."""
    if interpret:
        return min(triton.next_power_of_2(p), 16), 4
    tile = _tile(rows, p)
    return tile.block_p, tile.num_warps


def window_step_triton(
    zxbcdt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    ssm_state: Tensor,
    state_scale: Tensor | None,
    cache_x: Tensor,
    cache_b: Tensor,
    cache_dt: Tensor,
    cache_cum: Tensor,
    length: Tensor,
    A_log: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    norm_weight: Tensor,
    norm_eps: float,
    ngroups: int,
) -> Tensor:
    """A mixer's chunked-form step between ``in_proj`` and ``out_proj`` (see the module docstring).

    Arguments as :func:`avgkit_mamba.ops.dispatch.window_step`; ``zxbcdt`` is read in
    place. Returns ``rmsnorm(y * silu(z)) * norm_weight`` (b, d_inner) in ``zxbcdt.dtype``.
    """
    zxbcdt = last_dim_contiguous(zxbcdt)
    if cache_dt.stride() != cache_cum.stride():
        raise ValueError("cache_dt and cache_cum must share a layout (allocate them alike)")
    _check_scale(ssm_state, state_scale)
    b, window, nheads, p = cache_x.shape
    n = cache_b.shape[-1]
    d_inner = nheads * p
    z, xBC, dt = split_zxbcdt(zxbcdt, nheads, p, ngroups, n)
    w = conv_state.shape[-1]
    conv_weight = conv_weight.contiguous()
    sc = state_scale if state_scale is not None else A_log
    sc_strides = state_scale.stride() if state_scale is not None else (0, 0, 0)
    y = torch.empty(b, d_inner, device=zxbcdt.device, dtype=torch.float32)
    block_p, warps = window_tile(b * nheads, p, INTERPRET)
    # the window's tile at least 16 rows (masked, so no traffic): the fold's tl.dot needs every dim >= 16
    block_n, block_k = triton.next_power_of_2(n), max(triton.next_power_of_2(window), 16)
    _window_step_kernel[(b, nheads, triton.cdiv(p, block_p))](
        xBC, dt, z, conv_state, conv_weight, conv_bias if conv_bias is not None else conv_weight, ssm_state, sc,
        cache_x, cache_b, cache_dt, cache_cum, length,
        A_log, D if D is not None else A_log, dt_bias if dt_bias is not None else A_log, y,
        nheads // ngroups, p, n, w, window, d_inner, ngroups,
        xBC.stride(0), dt.stride(0), z.stride(0),
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        *ssm_state.stride(), *sc_strides,
        cache_x.stride(0), cache_x.stride(1), cache_x.stride(2),
        cache_b.stride(0), cache_b.stride(1), cache_b.stride(2),
        cache_dt.stride(0), cache_dt.stride(1), y.stride(0),
        HAS_CONV_BIAS=conv_bias is not None, HAS_D=D is not None, HAS_DT_BIAS=dt_bias is not None,
        QUANT=state_scale is not None, BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_W=triton.next_power_of_2(w),
        BLOCK_K=block_k, DOT_FOLD=min(block_p, block_n) >= 16, num_warps=warps, num_stages=1,
    )
    out = torch.empty(b, d_inner, device=zxbcdt.device, dtype=zxbcdt.dtype)
    _launch_epilogue(y, norm_weight, norm_eps, out, xBC, conv_state, ngroups, n)
    return out
