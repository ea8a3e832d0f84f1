"""Triton kernel for a Mamba-2 decode step in the chunked form: the state written once a window.

Two launches a layer, as the recurrent step's rule (:mod:`triton_step`): the conv's own
launch (``triton_step.launch_preconv``: this token's x, B and C through conv + SiLU, every
window shifted), then one program per (batch row, head, block of head dims) that issues
the read of its SSM state tile first, loads the window's earlier rows and this token's
conv outputs, and appends token ``j = length % K`` to the window caches (its x channels;
dt and the running ``cum = sum dt*A`` from the window's start by the head's first program;
B by the group's first head). The output is ``exp(cum_j) (H C)`` plus the window's tokens
``sum_{s<=j} (C . B_s) exp(cum_j - cum_s) dt_s x_s``, the D skip, gated by ``silu(z)``;
with a norm of one group and a caller that takes it (:func:`window_step_deferred_triton`)
the norm's per-row factor is left to the next block boundary, as the recurrent step does,
else the epilogue of :mod:`triton_step` norms it. Only at the window's last row does the
program write its tile back, having absorbed the window:
``H <- exp(cum_j) H + sum_s exp(cum_j - cum_s) dt_s x_s B_s^T``. So a step reads the state
and writes it once per K steps: about half the recurrent step's state traffic, and an int8
state is dequantised on most steps and requantised once a window.

The window's rows are read as (K, .) tiles in one round of loads with the state's (a loop
over ``s`` waited a round trip per token), not masked by ``j`` (which would order ``j``'s
load before theirs; the two measured the same); rows ``s >= j`` get weight exactly 0. The fold adds the earlier tokens as
rank-1 updates in order (a ``tl.dot`` fold held its operands in other layouts: about 200
registers a thread; ``scripts/step_resources.py --kernel window`` reports what each split
takes). Every cache row ``s < j`` a program weighs was written by an earlier launch; token
``j``'s own values come from registers, so no program depends on another of the same
launch.

Measured on an H100 (docs/benchmarks.md, "The chunked form with the rule's launches"): slower
than the recurrent update though it moves half the bytes: it issues about 1.6 times the
instructions a program, and converting and multiplying every state value in fp32 bounds it
by issue slots, not bytes.

Reference: :func:`avgkit_mamba.ops.ssd_torch.ssd_window_step`.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from avgkit_mamba.ops.norm_torch import DeferredNorm
from avgkit_mamba.ops.ssd_torch import split_zxbcdt
from avgkit_mamba.ops.triton_common import _dequantize_rows, _dt_log_decay, _quantize_rows, _skip_gate_store
from avgkit_mamba.ops.triton_launch import INTERPRET, gdc_wait, last_dim_contiguous, pdl_options, use_pdl
from avgkit_mamba.ops.triton_step import StepTile, _check_scale, _launch_epilogue, launch_preconv, overridden_split

__all__ = ["window_step_deferred_triton", "window_step_triton"]


@triton.jit
def _window_step_kernel(
    xc_ptr, dt_ptr, z_ptr, ssm_ptr, scale_ptr, cx_ptr, cbm_ptr, cdt_ptr, ccum_ptr, len_ptr,
    A_ptr, D_ptr, bias_ptr, y_ptr, nw_ptr,
    hpg, P, N, d_inner, ngroups,
    s_xc_b, s_dt_b, s_z_b,
    s_ss_b, s_ss_h, s_ss_p, s_ss_n, s_sc_b, s_sc_h, s_sc_p,
    s_cx_b, s_cx_l, s_cx_h, s_cb_b, s_cb_l, s_cb_g, s_cd_b, s_cd_l, s_y_b, sq_off,
    K: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, QUANT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DEFER_NORM: tl.constexpr,
    USE_PDL: tl.constexpr,
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

    # the state tile first: the one large read of the step
    s_ptrs = ssm_ptr + bi * s_ss_b + hi * s_ss_h + offs_p[:, None] * s_ss_p + offs_n[None, :] * s_ss_n
    smask = mask_p[:, None] & mask_n[None, :]
    state = tl.load(s_ptrs, mask=smask, other=0.0)
    sc_ptrs = scale_ptr + bi * s_sc_b + hi * s_sc_h + offs_p * s_sc_p
    if QUANT:
        state = _dequantize_rows(state, tl.load(sc_ptrs, mask=mask_p, other=0.0))
    else:
        state = state.to(tl.float32)
    # the window's rows as (K, .) tiles in the same round of loads as the state's (a loop over s would wait a
    # memory round trip per token), not masked by this token's row j (no load waits for j's). Rows s >= j hold
    # earlier windows' finite values, or row j's being written by this launch: they weigh an exact zero below.
    cx_row = cx_ptr + bi * s_cx_b + hi * s_cx_h
    cb_row = cbm_ptr + bi * s_cb_b + gi * s_cb_g
    cd_row = bi * s_cd_b + hi
    in_k = offs_k < K
    bs = tl.load(cb_row + offs_k[:, None] * s_cb_l + offs_n[None, :], mask=in_k[:, None] & mask_n[None, :],
                 other=0.0).to(tl.float32)
    xs = tl.load(cx_row + offs_k[:, None] * s_cx_l + offs_p[None, :], mask=in_k[:, None] & mask_p[None, :],
                 other=0.0).to(tl.float32)
    cum_s = tl.load(ccum_ptr + cd_row + offs_k * s_cd_l, mask=in_k, other=0.0)
    dt_s = tl.load(cdt_ptr + cd_row + offs_k * s_cd_l, mask=in_k, other=0.0)
    j = tl.load(len_ptr) % K
    mask_k = offs_k < j
    if USE_PDL:  # the loads above read this layer's own (earlier steps'); the rest the conv's launch wrote
        gdc_wait()

    # this token's x, B and C, convolved by the conv's own launch
    xc_row = xc_ptr + bi * s_xc_b
    x = tl.load(xc_row + hi * P + offs_p, mask=mask_p, other=0.0)
    Bv = tl.load(xc_row + d_inner + gi * N + offs_n, mask=mask_n, other=0.0)
    Cv = tl.load(xc_row + d_inner + (ngroups + gi) * N + offs_n, mask=mask_n, other=0.0)
    dt, log_decay = _dt_log_decay(tl.load(dt_ptr + bi * s_dt_b + hi), bias_ptr, A_ptr, hi, True, HAS_DT_BIAS)
    cum_j = tl.sum(tl.where(offs_k == j - 1, cum_s, 0.0), axis=0) + log_decay  # row j - 1's, from the tile (0 at j = 0)

    # append token j: this program's x channels; dt and cum by the head's first program, B by the group's
    tl.store(cx_row + j * s_cx_l + offs_p, x.to(cx_ptr.dtype.element_ty), mask=mask_p)
    if pb == 0:
        tl.store(cdt_ptr + cd_row + j * s_cd_l, dt)
        tl.store(ccum_ptr + cd_row + j * s_cd_l, cum_j)
        if hi % hpg == 0:
            tl.store(cb_row + j * s_cb_l + offs_n, Bv.to(cbm_ptr.dtype.element_ty), mask=mask_n)

    w = tl.where(mask_k, tl.exp(tl.minimum(cum_j - cum_s, 0.0)) * dt_s, 0.0)  # rows s >= j weigh nothing
    carry = tl.exp(cum_j)
    y = carry * tl.sum(state * Cv[None, :], axis=1) + tl.sum(Cv * Bv, axis=0) * dt * x  # the state, then token j
    y += tl.sum((w * tl.sum(bs * Cv[None, :], axis=1))[:, None] * xs, axis=0)
    _skip_gate_store(y, x, D_ptr, z_ptr, y_ptr, nw_ptr, bi, hi, P, s_z_b, s_y_b, sq_off, offs_p, mask_p, HAS_D,
                     True, DEFER_NORM, False)

    if j == K - 1:  # the window's last row: the state absorbs the window, once every K steps
        # the tile reloaded (from L2, once a window) rather than held through the output's work: kept in registers
        # it raised the whole kernel's count, and so fewer programs an SM on every step
        old = tl.load(s_ptrs, mask=smask, other=0.0)
        if QUANT:
            old = _dequantize_rows(old, tl.load(sc_ptrs, mask=mask_p, other=0.0))
        folded = carry * old.to(tl.float32) + (dt * x)[:, None] * Bv[None, :]
        # the earlier tokens one rank-1 update each, in order, their rows reloaded (cached by this program's loads
        # above): no (P, K, N) product or dot layout held; a loop (unrolled, it took 80 registers against 64)
        for s in range(K - 1):
            w_s = tl.exp(tl.minimum(cum_j - tl.load(ccum_ptr + cd_row + s * s_cd_l), 0.0)) * \
                tl.load(cdt_ptr + cd_row + s * s_cd_l)
            x_s = tl.load(cx_row + s * s_cx_l + offs_p, mask=mask_p, other=0.0).to(tl.float32)
            b_s = tl.load(cb_row + s * s_cb_l + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            folded += (w_s * x_s)[:, None] * b_s[None, :]
        if QUANT:
            q, new_scale = _quantize_rows(folded)
            tl.store(s_ptrs, q, mask=smask)
            tl.store(sc_ptrs, new_scale, mask=mask_p)
        else:
            tl.store(s_ptrs, folded.to(ssm_ptr.dtype.element_ty), mask=smask)


def window_tile(rows: int, p: int, quant: bool, interpret: bool = INTERPRET) -> StepTile:
    """The window kernel's split for ``rows`` (batch x heads) tiles of ``p`` head dims: head dims a program, warps
    and a register cap as ``triton_step.StepTile`` (its other fields do not apply: the conv always has its own
    launch, and the norm is deferred wherever the caller takes it). Within ``triton_step.split_rule``, that rule's
    split; else 32 head dims and eight warps (64 registers a thread, four programs an SM for a bf16 state;
    sm_90, Triton 3.6), 64 head dims for an int8 state (the same bytes a program), small tiles under the
    interpreter."""
    if interpret:
        return StepTile(min(triton.next_power_of_2(p), 16), 4)
    return overridden_split(rows, p, quant) or StepTile(min(64 if quant else 32, triton.next_power_of_2(p)), 8)


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
    return _window_step(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, state_scale, cache_x, cache_b,
                        cache_dt, cache_cum, length, A_log, D, dt_bias, norm_weight, norm_eps, ngroups,
                        defer=False)[0]


def window_step_deferred_triton(*args: Any, **kwargs: Any) -> tuple[Tensor, DeferredNorm | None]:
    """:func:`window_step_triton` (same arguments) for a caller that applies the norm's per-row factor itself:
    with a norm of one group, ``y * silu(z) * norm_weight`` and its
    :class:`~avgkit_mamba.ops.norm_torch.DeferredNorm` (as ``triton_step.decode_step_deferred_triton``: no
    epilogue launch); else the normed output and ``None``."""
    return _window_step(*args, **kwargs, defer=True)


def _window_step(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, state_scale, cache_x, cache_b, cache_dt,
                 cache_cum, length, A_log, D, dt_bias, norm_weight, norm_eps, ngroups, *,
                 defer: bool) -> tuple[Tensor, DeferredNorm | None]:
    zxbcdt = last_dim_contiguous(zxbcdt)
    if cache_dt.stride() != cache_cum.stride():
        raise ValueError("cache_dt and cache_cum must share a layout (allocate them alike)")
    _check_scale(ssm_state, state_scale)
    b, window, nheads, p = cache_x.shape
    n = cache_b.shape[-1]
    d_inner = nheads * p
    z, xBC, dt = split_zxbcdt(zxbcdt, nheads, p, ngroups, n)
    xc = launch_preconv(xBC, conv_state, conv_weight.contiguous(), conv_bias)  # every conv window shifted
    sc = state_scale if state_scale is not None else A_log
    sc_strides = state_scale.stride() if state_scale is not None else (0, 0, 0)
    deferred = defer and ngroups == 1
    if deferred:
        y = torch.empty(b, 2 * d_inner, device=zxbcdt.device, dtype=zxbcdt.dtype)  # y * w | y^2
    else:
        y = torch.empty(b, d_inner, device=zxbcdt.device, dtype=torch.float32)
    tile = window_tile(b * nheads, p, state_scale is not None)
    _window_step_kernel[(b, nheads, triton.cdiv(p, tile.block_p))](
        xc, dt, z, ssm_state, sc, cache_x, cache_b, cache_dt, cache_cum, length,
        A_log, D if D is not None else A_log, dt_bias if dt_bias is not None else A_log, y, norm_weight,
        nheads // ngroups, p, n, d_inner, ngroups,
        xc.stride(0), dt.stride(0), z.stride(0),
        *ssm_state.stride(), *sc_strides,
        cache_x.stride(0), cache_x.stride(1), cache_x.stride(2),
        cache_b.stride(0), cache_b.stride(1), cache_b.stride(2),
        cache_dt.stride(0), cache_dt.stride(1), y.stride(0), d_inner,
        K=window, HAS_D=D is not None, HAS_DT_BIAS=dt_bias is not None, QUANT=state_scale is not None,
        BLOCK_P=tile.block_p, BLOCK_N=triton.next_power_of_2(n), BLOCK_K=triton.next_power_of_2(window),
        DEFER_NORM=deferred, USE_PDL=use_pdl(), num_warps=tile.num_warps, num_stages=1,
        **({"maxnreg": tile.max_registers} if tile.max_registers else {}), **pdl_options(),
    )
    if deferred:
        return y[:, :d_inner], DeferredNorm(y[:, d_inner:], d_inner, norm_eps)
    out = torch.empty(b, d_inner, device=zxbcdt.device, dtype=zxbcdt.dtype)
    _launch_epilogue(y, norm_weight, norm_eps, out, xBC, conv_state, ngroups, n, shift_bc=False)
    return out, None
