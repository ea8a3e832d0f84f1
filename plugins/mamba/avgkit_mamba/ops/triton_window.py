"""Triton kernels for a Mamba-2 decode step in the chunked form: the state read every step, written once a window.

Three launches a layer (the recurrent step's rule, :mod:`triton_step`, has two):

0. ``_window_preconv_kernel``, one program per (batch row, block of x channels) and one per (batch row, group):
   this token's x, B and C through conv + SiLU, every conv window shifted, and the whole window's bookkeeping, so
   the state's programs only load and multiply. The x programs append x to the window cache (row ``j = length %
   K``); each group's program appends B, each of its heads' dt and running ``cum = sum dt*A`` from the window's
   start, and writes, per head, the decay since the window's start ``carry = exp(cum_j)``, the weights
   ``v_s = exp(cum_j - cum_s) dt_s`` by which token ``s <= j`` reaches this one, and ``w_s = v_s (C . B_s)``
   (``C . B_s`` once a group, not once a program of every head).
1. ``_window_step_kernel``, one program per (batch row, head, block of head dims): issues the read of its SSM
   state tile first, then ``y = carry (H C) + sum_{s<=j} w_s x_s`` plus the ``D`` skip, gated by ``silu(z)``; with a
   norm of one group and a caller that takes it (:func:`window_step_deferred_triton`) the norm's per-row factor
   is left to the next block boundary, as the recurrent step does, else the epilogue of :mod:`triton_step` norms
   it.
2. ``_window_fold_kernel``: only at the window's last row (else its programs return at once), each state tile
   absorbs the window, ``H <- carry H + sum_s v_s x_s B_s^T``, and is written back. A launch of its own so that
   the step kernel's registers, and so its programs an SM, are not the fold's (in one kernel, 150 registers a
   thread against 72 compiled for sm_90).

So a step reads the state and writes it once per K steps, and a state value costs a step its load and a share of
an integer dot product: an int8 state is read as int32 words and ``C . q`` summed exactly in int32, two ``dp2a`` a
word (``triton_common._dot_words``), from C rounded to 16-bit integers by the first launch (about 1e-5 of y);
against the recurrent update's read, update, row maximum, requantisation and write of every value. The int8
state is requantised once a window, by the fold, in its scaled domain as the recurrent words path does
(``u = q + sum_s (v_s x_s / s) B_s``, ``s`` the row's scale times ``carry``).

Every value a program reads was written by an earlier launch (the caches' rows ``s < j`` by earlier steps, row
``j`` and the weights by this step's first launch), so no program depends on another of its own launch. Cache rows
after ``j`` (an earlier window's) are neither loaded nor weighed.

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
from avgkit_mamba.ops.triton_common import (
    _C16,
    _OLD_MIN,
    _conv_shift,
    _dequantize_rows,
    _dot_words,
    _dt_log_decay,
    _fast_div,
    _int8_to_float,
    _pack_c16,
    _quads,
    _quantize_rows,
    _round_c16,
    _skip_gate_store,
    _state_tile,
    _store_words,
    _unpack_byte,
)
from avgkit_mamba.ops.triton_launch import (
    INTERPRET,
    gdc_launch_dependents,
    gdc_wait,
    last_dim_contiguous,
    pdl_options,
    use_pdl,
)
from avgkit_mamba.ops.triton_step import (
    StepTile,
    _check_scale,
    _launch_epilogue,
    overridden_split,
    words_strides,
)

__all__ = ["window_step_deferred_triton", "window_step_triton"]


@triton.jit
def _window_preconv_kernel(
    xbc_ptr, conv_ptr, cw_ptr, cb_ptr, xc_ptr, dt_ptr, bias_ptr, A_ptr, cx_ptr, cbm_ptr, cdt_ptr, ccum_ptr, len_ptr,
    d_inner, ngroups, hpg, N, W, x_blocks,
    s_xbc_b, s_cs_b, s_cs_c, s_cs_w, s_xc_b, s_dt_b, s_dt_h,
    s_cx_b, s_cx_l, s_cb_b, s_cb_l, s_cb_g, s_cd_b, s_cd_l,
    off_c, off_carry, off_w, off_v, off_cq, off_cs,
    K: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, HAS_DT_BIAS: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_HG: tl.constexpr,
    WORDS: tl.constexpr, USE_PDL: tl.constexpr,
):
    """Program (row ``bi``, ``pid < x_blocks``): a block of x channels, convolved into ``xc`` and appended to the x
    cache. Program (row ``bi``, ``x_blocks + g``): group ``g``'s B and C, then its heads' window weights (module
    docstring); ``xc``'s columns: x, C (read by the state kernel without ``WORDS``), carry (a head), w and v (K a
    head), and with ``WORDS`` C rounded to 16-bit integers as ``_dot_words`` takes them (N / 2 int32 a group) and
    their scale (one a group)."""
    if USE_PDL:  # in_proj's output complete; the window kernel may launch now and read its state tiles meanwhile
        gdc_wait()
        gdc_launch_dependents()
    bi = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    j = tl.load(len_ptr) % K
    conv_row = conv_ptr + bi * s_cs_b
    xbc_row = xbc_ptr + bi * s_xbc_b
    xc_row = xc_ptr + bi * s_xc_b
    if pid < x_blocks:
        chan = pid * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = chan < d_inner
        x = _conv_shift(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, chan, mask, W, HAS_CONV_BIAS, BLOCK_W)
        tl.store(xc_row + chan, x, mask=mask)
        tl.store(cx_ptr + bi * s_cx_b + j * s_cx_l + chan, x.to(cx_ptr.dtype.element_ty), mask=mask)
    else:
        gi = pid - x_blocks
        offs_n = tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        offs_k = tl.arange(0, BLOCK_K)
        offs_h = tl.arange(0, BLOCK_HG)
        mask_h = offs_h < hpg
        heads = gi * hpg + tl.where(mask_h, offs_h, 0)
        # the earlier rows first (written by earlier steps): their loads overlap the conv's
        earlier = offs_k < j
        cb_row = cbm_ptr + bi * s_cb_b + gi * s_cb_g
        bs = tl.load(cb_row + offs_k[:, None] * s_cb_l + offs_n[None, :], mask=earlier[:, None] & mask_n[None, :],
                     other=0.0).to(tl.float32)
        cd = bi * s_cd_b + offs_k[None, :] * s_cd_l + heads[:, None]  # (heads, rows)
        cd_mask = mask_h[:, None] & earlier[None, :]
        cum_s = tl.load(ccum_ptr + cd, mask=cd_mask, other=0.0)
        dt_s = tl.load(cdt_ptr + cd, mask=cd_mask, other=0.0)
        dt, log_decay = _dt_log_decay(tl.load(dt_ptr + bi * s_dt_b + heads * s_dt_h, mask=mask_h, other=0.0),
                                      bias_ptr, A_ptr, heads, True, HAS_DT_BIAS)
        chan_b = d_inner + gi * N + offs_n
        Bv = _conv_shift(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, chan_b, mask_n, W, HAS_CONV_BIAS, BLOCK_W)
        Cv = _conv_shift(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, chan_b + ngroups * N, mask_n, W,
                         HAS_CONV_BIAS, BLOCK_W)
        if WORDS:  # C . q of an int8 state in integer arithmetic: C to 16 bits, by its largest magnitude
            cmax = tl.max(tl.abs(Cv), axis=0)
            c0, c1, c2, c3 = _quads(_round_c16(Cv, tl.where(cmax > 0, _C16 / cmax, 0.0)), BLOCK_N)
            c_lo, c_hi = _pack_c16(c0, c1, c2, c3)
            offs_q = tl.arange(0, BLOCK_N // 4)
            cq_row = xc_row.to(tl.pointer_type(tl.int32)) + off_cq + gi * (N // 2)
            tl.store(cq_row + offs_q, c_lo, mask=offs_q < N // 4)
            tl.store(cq_row + N // 4 + offs_q, c_hi, mask=offs_q < N // 4)
            tl.store(xc_row + off_cs + gi, cmax / _C16)
        else:
            tl.store(xc_row + off_c + gi * N + offs_n, Cv, mask=mask_n)
        b_j = Bv.to(cbm_ptr.dtype.element_ty)  # row j as the cache holds it, as every other row is weighed
        tl.store(cb_row + j * s_cb_l + offs_n, b_j, mask=mask_n)
        is_j = offs_k == j
        bs = tl.where(is_j[:, None], b_j.to(tl.float32)[None, :], bs)
        scores = tl.sum(bs * Cv[None, :], axis=1)  # C . B_s, rows after j zero
        cum_j = tl.sum(tl.where(offs_k[None, :] == j - 1, cum_s, 0.0), axis=1) + log_decay  # 0 before row 0
        tl.store(cdt_ptr + bi * s_cd_b + j * s_cd_l + heads, dt, mask=mask_h)
        tl.store(ccum_ptr + bi * s_cd_b + j * s_cd_l + heads, cum_j, mask=mask_h)
        cum_s = tl.where(is_j[None, :], cum_j[:, None], cum_s)
        dt_s = tl.where(is_j[None, :], dt[:, None], dt_s)
        v = tl.where((offs_k <= j)[None, :], tl.exp(tl.minimum(cum_j[:, None] - cum_s, 0.0)) * dt_s, 0.0)
        tl.store(xc_row + off_carry + heads, tl.exp(cum_j), mask=mask_h)
        hk = xc_row + heads[:, None] * K + offs_k[None, :]
        hk_mask = mask_h[:, None] & (offs_k < K)[None, :]
        tl.store(hk + off_v, v, mask=hk_mask)
        tl.store(hk + off_w, v * scores[None, :], mask=hk_mask)


@triton.jit
def _fold_words(wx, s, v_ptr, cx_row, cb_row, s_cx_l, s_cb_l, s_ptrs, sc_ptrs, smask, offs_p, mask_p, offs_n,
                mask_n, K: tl.constexpr, BLOCK_N: tl.constexpr):
    """The window absorbed into an int8 state tile held as words (``wx``: bytes ``q + 128``) in its scaled domain,
    ``u = q + sum_s (v_s x_s / s) B_s`` with ``s`` the row's scale times the carry (at least ``_OLD_MIN``), then
    requantised and stored (``_store_words``) as the recurrent words path does."""
    s = tl.maximum(s, _OLD_MIN)
    u0 = _unpack_byte(wx, 0)
    u1 = _unpack_byte(wx, 1)
    u2 = _unpack_byte(wx, 2)
    u3 = _unpack_byte(wx, 3)
    for t in range(K):  # one rank-1 update a row, its x and B reloaded (from L2): no (P, K, N) product held
        x_t = tl.load(cx_row + t * s_cx_l + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        b_t = tl.load(cb_row + t * s_cb_l + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        r = _fast_div(tl.load(v_ptr + t) * x_t, s)[:, None]
        B0, B1, B2, B3 = _quads(b_t, BLOCK_N)
        u0 += r * B0[None, :]
        u1 += r * B1[None, :]
        u2 += r * B2[None, :]
        u3 += r * B3[None, :]
    _store_words(u0, u1, u2, u3, s, s_ptrs, sc_ptrs, smask, mask_p, "")


@triton.jit
def _window_step_kernel(
    xc_ptr, z_ptr, ssm_ptr, scale_ptr, cx_ptr, len_ptr, D_ptr, y_ptr, nw_ptr,
    hpg, P, N,
    s_xc_b, s_z_b,
    s_ss_b, s_ss_h, s_ss_p, s_ss_n, s_sc_b, s_sc_h, s_sc_p,
    s_cx_b, s_cx_l, s_cx_h, s_y_b, sq_off,
    off_c, off_carry, off_w, off_cq, off_cs,
    K: tl.constexpr, HAS_D: tl.constexpr, QUANT: tl.constexpr, WORDS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DEFER_NORM: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """One program: batch row ``bi``, head ``hi``, head dims block ``pb``: ``y`` from the state as it stood before
    the window (module docstring). With ``WORDS`` (an int8 state read as int32 words) the state strides count
    words."""
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
    s_ptrs, smask = _state_tile(ssm_ptr, bi, hi, s_ss_b, s_ss_h, s_ss_p, s_ss_n, offs_p, mask_p, offs_n, mask_n, N,
                                WORDS, BLOCK_N)
    state = tl.load(s_ptrs, mask=smask, other=0)
    sc_ptrs = scale_ptr + bi * s_sc_b + hi * s_sc_h + offs_p * s_sc_p
    row_scale = tl.full((BLOCK_P,), 1.0, tl.float32)
    if QUANT:
        row_scale = tl.load(sc_ptrs, mask=mask_p, other=0.0)
    j = tl.load(len_ptr) % K
    if USE_PDL:  # the rest was written by the first launch (row j of the caches, the weights)
        gdc_wait()

    xc_row = xc_ptr + bi * s_xc_b
    cx_row = cx_ptr + bi * s_cx_b + hi * s_cx_h
    xs = tl.load(cx_row + offs_k[:, None] * s_cx_l + offs_p[None, :], mask=(offs_k <= j)[:, None] & mask_p[None, :],
                 other=0.0).to(tl.float32)
    w_s = tl.load(xc_row + off_w + hi * K + offs_k, mask=offs_k < K, other=0.0)
    carry = tl.load(xc_row + off_carry + hi)
    x = tl.load(xc_row + hi * P + offs_p, mask=mask_p, other=0.0)

    if WORDS:  # C . q in int32, exactly, from C rounded to 16 bits (a relative error of about 1e-5 in y)
        offs_q = tl.arange(0, BLOCK_N // 4)
        cq_row = xc_row.to(tl.pointer_type(tl.int32)) + off_cq + gi * (N // 2)
        c_lo = tl.load(cq_row + offs_q, mask=offs_q < N // 4, other=0)
        c_hi = tl.load(cq_row + N // 4 + offs_q, mask=offs_q < N // 4, other=0)
        hc = tl.sum(_dot_words(state, c_lo[None, :], c_hi[None, :]), axis=1).to(tl.float32) * \
            tl.load(xc_row + off_cs + gi)
    else:
        Cv = tl.load(xc_row + off_c + gi * N + offs_n, mask=mask_n, other=0.0)
        hc = tl.sum((_int8_to_float(state) if QUANT else state.to(tl.float32)) * Cv[None, :], axis=1)
    y = (carry * row_scale) * hc + tl.sum(w_s[:, None] * xs, axis=0)
    _skip_gate_store(y, x, D_ptr, z_ptr, y_ptr, nw_ptr, bi, hi, P, s_z_b, s_y_b, sq_off, offs_p, mask_p, HAS_D,
                     True, DEFER_NORM, WORDS)


@triton.jit
def _window_fold_kernel(
    xc_ptr, ssm_ptr, scale_ptr, cx_ptr, cbm_ptr, len_ptr,
    hpg, nheads, P, N, items,
    s_xc_b, s_ss_b, s_ss_h, s_ss_p, s_ss_n, s_sc_b, s_sc_h, s_sc_p,
    s_cx_b, s_cx_l, s_cx_h, s_cb_b, s_cb_l, s_cb_g,
    off_carry, off_v,
    K: tl.constexpr, QUANT: tl.constexpr, WORDS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """At the window's last row, every state tile absorbs the window (module docstring), else nothing: a launch
    of its own, so the window kernel's registers (and programs an SM) are not the fold's. Each program takes tiles
    ``pid, pid + programs, ...`` of the ``items`` (batch row, head, block of head dims)."""
    if tl.load(len_ptr) % K == K - 1:
        p_blocks = tl.cdiv(P, BLOCK_P)
        offs_n = tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        for item in range(tl.program_id(0), items, tl.num_programs(0)):
            pb = item % p_blocks
            hi = (item // p_blocks) % nheads
            bi = (item // (p_blocks * nheads)).to(tl.int64)
            gi = hi // hpg
            offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            s_ptrs, smask = _state_tile(ssm_ptr, bi, hi, s_ss_b, s_ss_h, s_ss_p, s_ss_n, offs_p, mask_p, offs_n,
                                        mask_n, N, WORDS, BLOCK_N)
            state = tl.load(s_ptrs, mask=smask, other=0)
            sc_ptrs = scale_ptr + bi * s_sc_b + hi * s_sc_h + offs_p * s_sc_p
            xc_row = xc_ptr + bi * s_xc_b
            carry = tl.load(xc_row + off_carry + hi)
            v_ptr = xc_row + off_v + hi * K
            cx_row = cx_ptr + bi * s_cx_b + hi * s_cx_h
            cb_row = cbm_ptr + bi * s_cb_b + gi * s_cb_g
            if WORDS:
                _fold_words(state ^ -2139062144, carry * tl.load(sc_ptrs, mask=mask_p, other=0.0), v_ptr, cx_row,
                            cb_row, s_cx_l, s_cb_l, s_ptrs, sc_ptrs, smask, offs_p, mask_p, offs_n, mask_n, K,
                            BLOCK_N)
            else:
                if QUANT:
                    folded = _dequantize_rows(state, carry * tl.load(sc_ptrs, mask=mask_p, other=0.0))
                else:
                    folded = carry * state.to(tl.float32)
                for t in range(K):
                    x_t = tl.load(cx_row + t * s_cx_l + offs_p, mask=mask_p, other=0.0).to(tl.float32)
                    b_t = tl.load(cb_row + t * s_cb_l + offs_n, mask=mask_n, other=0.0).to(tl.float32)
                    folded += (tl.load(v_ptr + t) * x_t)[:, None] * b_t[None, :]
                if QUANT:
                    q, new_scale = _quantize_rows(folded)
                    tl.store(s_ptrs, q, mask=smask)
                    tl.store(sc_ptrs, new_scale, mask=mask_p)
                else:
                    tl.store(s_ptrs, folded.to(ssm_ptr.dtype.element_ty), mask=smask)


def window_tile(rows: int, p: int, quant: bool, interpret: bool = INTERPRET) -> StepTile:
    """The window kernel's split for ``rows`` (batch x heads) tiles of ``p`` head dims: head dims a program, warps
    and a register cap as ``triton_step.StepTile`` (its other fields do not apply: the conv always has its own
    launch, an int8 state is always read as words where it can be, and the norm is deferred wherever the caller
    takes it). Within ``triton_step.split_rule``, that rule's split; else 64 head dims a program, on two warps for
    an int8 state (128 values a thread: 584 SASS instructions a thread, 4.6 a value, 64 registers, 16 programs an
    SM compiled for sm_90 by Triton 3.6; four warps: 9.1 a value, eight: 12.8; ``scripts/step_resources.py
    --kernel window``) and four for a bf16 or fp32 one (its values multiplied in fp32: 72 registers), small tiles
    under the interpreter."""
    if interpret:
        return StepTile(min(triton.next_power_of_2(p), 16), 4)
    return overridden_split(rows, p, quant) or StepTile(min(64, triton.next_power_of_2(p)), 2 if quant else 4)


def fold_tile(p: int, interpret: bool = INTERPRET) -> StepTile:
    """The fold's split: 32 head dims and four warps (32 values a thread, whose four quarters stay in registers
    through the window's rank-1 updates), small tiles under the interpreter."""
    return StepTile(min(triton.next_power_of_2(p), 16 if interpret else 32), 4)


def _fold_programs(device: torch.device) -> int:
    """Programs of the fold's launch: enough for the GPU (eight an SM), few under the interpreter (each takes
    several tiles, as on a GPU at a large batch)."""
    if device.type != "cuda":
        return 3
    return 8 * torch.cuda.get_device_properties(device).multi_processor_count


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


def _check_caches(cache_x: Tensor, cache_b: Tensor, cache_dt: Tensor, cache_cum: Tensor) -> None:
    """The layouts the kernels index by a row stride alone (as ``Mamba2ChunkedState`` allocates them); written in
    place, so never copied into shape."""
    _, _, h, p = cache_x.shape
    if cache_x.stride(3) != 1 or cache_x.stride(2) != p or cache_b.stride(3) != 1 or cache_dt.stride(2) != 1 or \
            cache_dt.stride() != cache_cum.stride():
        raise ValueError("the window caches must be contiguous in their last dims (x: heads x head dims; b, dt and "
                         "cum: their last) and dt and cum must share a layout; allocate them as "
                         "Mamba2Mixer.allocate_chunked_state does")


def _window_step(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, state_scale, cache_x, cache_b, cache_dt,
                 cache_cum, length, A_log, D, dt_bias, norm_weight, norm_eps, ngroups, *,
                 defer: bool) -> tuple[Tensor, DeferredNorm | None]:
    zxbcdt = last_dim_contiguous(zxbcdt)
    _check_caches(cache_x, cache_b, cache_dt, cache_cum)
    _check_scale(ssm_state, state_scale)
    b, window, nheads, p = cache_x.shape
    n = cache_b.shape[-1]
    d_inner = nheads * p
    hpg = nheads // ngroups
    z, xBC, dt = split_zxbcdt(zxbcdt, nheads, p, ngroups, n)
    # xc's columns: x, C, carry (a head), w and v (K a head)
    off_c = d_inner
    off_carry = off_c + ngroups * n
    off_w = off_carry + nheads
    off_v = off_w + nheads * window
    off_cq = off_v + nheads * window
    off_cs = off_cq + ngroups * (n // 2)
    xc = torch.empty(b, off_cs + ngroups, device=zxbcdt.device, dtype=torch.float32)
    words, s_strides = words_strides(ssm_state, state_scale)
    block_c = min(256, triton.next_power_of_2(d_inner))
    x_blocks = triton.cdiv(d_inner, block_c)
    block_n, block_k = triton.next_power_of_2(n), triton.next_power_of_2(window)
    w = conv_state.shape[-1]
    _window_preconv_kernel[(b, x_blocks + ngroups)](
        xBC, conv_state, conv_weight.contiguous(), conv_bias if conv_bias is not None else conv_weight, xc, dt,
        dt_bias if dt_bias is not None else A_log, A_log, cache_x, cache_b, cache_dt, cache_cum, length,
        d_inner, ngroups, hpg, n, w, x_blocks,
        xBC.stride(0), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2), xc.stride(0), dt.stride(0),
        dt.stride(1), cache_x.stride(0), cache_x.stride(1), cache_b.stride(0), cache_b.stride(1), cache_b.stride(2),
        cache_dt.stride(0), cache_dt.stride(1),
        off_c, off_carry, off_w, off_v, off_cq, off_cs,
        K=window, HAS_CONV_BIAS=conv_bias is not None, HAS_DT_BIAS=dt_bias is not None, BLOCK_C=block_c,
        BLOCK_N=block_n, BLOCK_W=triton.next_power_of_2(w), BLOCK_K=block_k,
        BLOCK_HG=triton.next_power_of_2(hpg), WORDS=words, USE_PDL=use_pdl(), num_warps=4, **pdl_options(),
    )
    sc = state_scale if state_scale is not None else xc
    sc_strides = state_scale.stride() if state_scale is not None else (0, 0, 0)
    deferred = defer and ngroups == 1
    if deferred:
        y = torch.empty(b, 2 * d_inner, device=zxbcdt.device, dtype=zxbcdt.dtype)  # y * w | y^2
    else:
        y = torch.empty(b, d_inner, device=zxbcdt.device, dtype=torch.float32)
    tile = window_tile(b * nheads, p, state_scale is not None)
    _window_step_kernel[(b, nheads, triton.cdiv(p, tile.block_p))](
        xc, z, ssm_state, sc, cache_x, length, D if D is not None else xc, y, norm_weight,
        hpg, p, n,
        xc.stride(0), z.stride(0),
        *s_strides, *sc_strides,
        cache_x.stride(0), cache_x.stride(1), cache_x.stride(2), y.stride(0), d_inner,
        off_c, off_carry, off_w, off_cq, off_cs,
        K=window, HAS_D=D is not None, QUANT=state_scale is not None, WORDS=words,
        BLOCK_P=tile.block_p, BLOCK_N=block_n, BLOCK_K=block_k, DEFER_NORM=deferred, USE_PDL=use_pdl(),
        num_warps=tile.num_warps, num_stages=1, **({"maxnreg": tile.max_registers} if tile.max_registers else {}),
        **pdl_options(),
    )
    fold = fold_tile(p)
    items = b * nheads * triton.cdiv(p, fold.block_p)
    _window_fold_kernel[(min(items, _fold_programs(zxbcdt.device)),)](
        xc, ssm_state, sc, cache_x, cache_b, length,
        hpg, nheads, p, n, items,
        xc.stride(0), *s_strides, *sc_strides,
        cache_x.stride(0), cache_x.stride(1), cache_x.stride(2), cache_b.stride(0), cache_b.stride(1),
        cache_b.stride(2),
        off_carry, off_v,
        K=window, QUANT=state_scale is not None, WORDS=words, BLOCK_P=fold.block_p, BLOCK_N=block_n,
        num_warps=fold.num_warps, num_stages=1,
    )
    if deferred:
        return y[:, :d_inner], DeferredNorm(y[:, d_inner:], d_inner, norm_eps)
    out = torch.empty(b, d_inner, device=zxbcdt.device, dtype=zxbcdt.dtype)
    _launch_epilogue(y, norm_weight, norm_eps, out, xBC, conv_state, ngroups, n, shift_bc=False)
    return out, None
