"""Triton kernels for a Mamba-2 layer's decode step (one token): three launches per layer (two without
``StepTile.preconv``).

0. ``_preconv_kernel`` (``StepTile.preconv``, the rule), one program per (batch row, block of channels): this
   token's x, B and C through the causal conv + SiLU into an fp32 buffer, every conv window shifted, so the
   state update below only loads them (no window, no barrier in its path).
1. ``_step_kernel``, one program per (batch row, heads of one group, block of head dims):
   with one head, issues the read of its SSM state tile first (the one large read of the
   step); loads x, B and C (``preconv``) or else convolves the group's B and C channels
   from their *old* windows, then for each head (with several heads, the next heads'
   tiles staged through shared memory while one updates, ``StepTile.stages``) shifts the
   conv window of its own x channels and convolves them (+ bias, SiLU); discretises dt (bias + softplus, and
   ``A = -exp(A_log)`` when given the log), updates the state tile in place, reads it
   out with C, adds the ``D`` skip and gates with ``silu(z)``.
2. ``_epilogue_kernel``, one program per (batch row, group): the grouped RMSNorm of the
   gated output (the mixer's norm, so it never leaves the step) and, without ``preconv``,
   the shift of the group's B and C windows. B and C are shared by every head of a group;
   shifting them in another launch means no program of the state update can see a
   half-updated window, without atomics or a grid-wide handshake.

With ``StepTile.defer_norm`` (the rule) and a norm of one group, a caller that can scale the mixer's output
(:func:`decode_step_deferred_triton`, the backbone's block boundary) gets ``y * silu(z) * norm_weight`` and,
beside it in the same rows, the squares of ``y * silu(z)`` instead of the epilogue's norm (``norm_torch.DeferredNorm``): with
``preconv``, two launches a layer.

The work split (``StepTile``) follows a fixed rule (``_tile``).
Reference: :func:`avgkit_mamba.ops.dispatch.fused_step_torch` (+ ``GatedRMSNorm``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from avgkit_mamba.ops.norm_torch import DeferredNorm
from avgkit_mamba.ops.ssd_torch import check_step_shapes, split_zxbcdt
from avgkit_mamba.ops.triton_common import (
    _OLD_MIN,
    _conv_bc,
    _conv_shift,
    _conv_x,
    _conv_x_from_old,
    _dequantize_rows,
    _dt_log_decay,
    _fast_div,
    _quads,
    _quantize_rows,
    _shift_bc_windows,
    _shift_windows,
    _skip_gate_store,
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

__all__ = ["StepTile", "decode_step_deferred_triton", "decode_step_projected_triton", "decode_step_triton",
           "fused_step_triton", "launch_preconv", "split_rule", "words_strides"]

#: Heads a program updates under the interpreter: two, so the checks run the loop over heads where the heads per
#: group allow it.
INTERP_HEADS = 2


@triton.jit
def _update_head(state, row_scale, s_row, sc_row, smask, Bv, Cv, conv_row, xbc_row, xc_row, cw_ptr, cb_ptr, dt_ptr,
                 z_ptr, A_ptr, D_ptr, bias_ptr, y_ptr, nw_ptr, bi, hi, nheads, xc_heads, P, W, s_cs_c, s_cs_w, s_dt_b,
                 s_dt_h, s_z_b, s_ss_h, s_sc_h, s_y_b, sq_off, offs_p, mask_p, A_IS_LOG: tl.constexpr,
                 HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
                 QUANT: tl.constexpr, BLOCK_W: tl.constexpr, STORE_CACHE: tl.constexpr, SHIFT_X: tl.constexpr,
                 PRECONV: tl.constexpr, DEFER_NORM: tl.constexpr, WORDS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Head ``hi``'s step from its loaded state tile: conv of its x channels (their window shifted here with
    ``SHIFT_X``, else later by the caller; with ``PRECONV`` read convolved from ``xc_row``, and dt and the decay
    from its columns ``xc_heads``), dt, the update (stored in place), y = C . state, then ``_skip_gate_store``."""
    if PRECONV:
        dt = tl.load(xc_row + xc_heads + hi)
        decay = tl.load(xc_row + xc_heads + nheads + hi)
        x = tl.load(xc_row + hi * P + offs_p, mask=mask_p, other=0.0)
    else:
        dt, log_decay = _dt_log_decay(tl.load(dt_ptr + bi * s_dt_b + hi * s_dt_h), bias_ptr, A_ptr, hi, A_IS_LOG,
                                      HAS_DT_BIAS)
        decay = tl.exp(log_decay)
        if SHIFT_X:
            x = _conv_x(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, hi, P, W, offs_p, mask_p, HAS_CONV_BIAS,
                        BLOCK_W)
        else:
            x = _conv_x_from_old(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, hi, P, W, offs_p, mask_p,
                                 HAS_CONV_BIAS, BLOCK_W)
    s_ptrs = s_row + hi * s_ss_h
    if WORDS:
        y = _update_words(state, row_scale * decay, dt * x, Bv, Cv, s_ptrs, sc_row + hi * s_sc_h, smask, mask_p,
                          BLOCK_N, STORE_CACHE)
    elif QUANT:
        new = _dequantize_rows(state, row_scale * decay) + (dt * x)[:, None] * Bv[None, :]
        q, new_scale = _quantize_rows(new)
        tl.store(s_ptrs, q, mask=smask, cache_modifier=STORE_CACHE)
        tl.store(sc_row + hi * s_sc_h, new_scale, mask=mask_p)
        y = tl.sum(new * Cv[None, :], axis=1)
    else:
        new = state.to(tl.float32) * decay + (dt * x)[:, None] * Bv[None, :]
        tl.store(s_ptrs, new.to(s_row.dtype.element_ty), mask=smask, cache_modifier=STORE_CACHE)
        y = tl.sum(new * Cv[None, :], axis=1)
    _skip_gate_store(y, x, D_ptr, z_ptr, y_ptr, nw_ptr, bi, hi, P, s_z_b, s_y_b, sq_off, offs_p, mask_p, HAS_D, HAS_Z,
                     DEFER_NORM, WORDS)


@triton.jit
def _update_words(w, s, dtx, Bv, Cv, s_ptrs, sc_ptrs, smask, mask_p, BLOCK_N: tl.constexpr,
                  STORE_CACHE: tl.constexpr):
    """An int8 state tile held as int32 words (``StepTile.words``) updated in the scaled domain and stored;
    returns y = C . state for its rows.

    With ``s`` the row's scale times the decay, the new state is ``s * u`` where ``u = q + (dt x / s) B``: one
    fused multiply-add a value, no product with the scale; the row maximum, the requantisation
    (``round(u * 127 / max|u|)``, ``_store_words``) and ``y = s * (C . u)`` follow from ``u`` alone; ``s`` is taken
    as at least ``_OLD_MIN``. The result agrees with the byte path (``_dequantize_rows``, ``_quantize_rows``) to the
    rounding of a product, within one quantum."""
    s = tl.maximum(s, _OLD_MIN)
    wx = w ^ -2139062144  # 0x80808080: each byte q + 128
    r = _fast_div(dtx, s)[:, None]
    B0, B1, B2, B3 = _quads(Bv, BLOCK_N)
    u0 = _unpack_byte(wx, 0) + r * B0[None, :]
    u1 = _unpack_byte(wx, 1) + r * B1[None, :]
    u2 = _unpack_byte(wx, 2) + r * B2[None, :]
    u3 = _unpack_byte(wx, 3) + r * B3[None, :]
    _store_words(u0, u1, u2, u3, s, s_ptrs, sc_ptrs, smask, mask_p, STORE_CACHE)
    C0, C1, C2, C3 = _quads(Cv, BLOCK_N)
    return tl.sum(u0 * C0[None, :] + u1 * C1[None, :] + u2 * C2[None, :] + u3 * C3[None, :], axis=1) * s


@triton.jit
def _step_kernel(
    xbc_ptr, xc_ptr, dt_ptr, z_ptr, conv_ptr, cw_ptr, cb_ptr, ssm_ptr, scale_ptr, A_ptr, D_ptr, bias_ptr, y_ptr,
    nw_ptr,
    batch, nheads, P, N, W, d_inner,
    s_xbc_b, s_xc_b, s_dt_b, s_dt_h, s_z_b,
    s_cs_b, s_cs_c, s_cs_w,
    s_ss_b, s_ss_h, s_ss_p, s_ss_n,
    s_sc_b, s_sc_h, s_sc_p,
    s_y_b, sq_off,
    A_IS_LOG: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, QUANT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr, HEADS: tl.constexpr, STAGES: tl.constexpr, LOAD_EVICT: tl.constexpr,
    STORE_CACHE: tl.constexpr, PRECONV: tl.constexpr, DEFER_NORM: tl.constexpr, USE_PDL: tl.constexpr,
    HPG: tl.constexpr, WORDS: tl.constexpr,
):
    """One program: batch row ``bi``, ``HEADS`` heads of one group from ``h0``, head dims block ``pb``. ``HPG``
    (heads per group) is a constant: a division by a runtime value costs some thirty instructions a thread. With
    ``WORDS`` (an int8 state read and written as int32 words, ``StepTile.words``) the state strides count words."""
    xc_heads = d_inner + 2 * (nheads // HPG) * N  # with PRECONV: dt and the decay of each head after x, B and C
    bi = tl.program_id(0).to(tl.int64)
    h0 = tl.program_id(1) * HEADS
    pb = tl.program_id(2)
    gi = h0 // HPG
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < P
    mask_n = offs_n < N
    if WORDS:
        offs_w = tl.arange(0, BLOCK_N // 4)
        s_row = ssm_ptr.to(tl.pointer_type(tl.int32)) + bi * s_ss_b + offs_p[:, None] * s_ss_p + offs_w[None, :]
        smask = mask_p[:, None] & (offs_w[None, :] < N // 4)
    else:
        s_row = ssm_ptr + bi * s_ss_b + offs_p[:, None] * s_ss_p + offs_n[None, :] * s_ss_n
        smask = mask_p[:, None] & mask_n[None, :]
    sc_row = scale_ptr + bi * s_sc_b + offs_p * s_sc_p
    conv_row = conv_ptr + bi * s_cs_b
    xbc_row = xbc_ptr + bi * s_xbc_b
    xc_row = xc_ptr + bi * s_xc_b
    if HEADS == 1:
        # the state tile first: its latency hides behind the conv work below
        state = tl.load(s_row + h0 * s_ss_h, mask=smask, other=0.0, eviction_policy=LOAD_EVICT)
        row_scale = tl.zeros((BLOCK_P,), dtype=tl.float32)
        if QUANT:
            row_scale = tl.load(sc_row + h0 * s_sc_h, mask=mask_p, other=0.0)
    if USE_PDL:  # launched before the kernels that write its inputs finished: its own state tile is in flight
        gdc_wait()
    if PRECONV:  # x, B and C convolved by _preconv_kernel: loads alone, no window here
        Bv = tl.load(xc_row + d_inner + gi * N + offs_n, mask=mask_n, other=0.0)
        Cv = tl.load(xc_row + d_inner + (nheads // HPG + gi) * N + offs_n, mask=mask_n, other=0.0)
    else:
        Bv, Cv = _conv_bc(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, gi, nheads // HPG, N, W, d_inner,
                          offs_n, mask_n, HAS_CONV_BIAS, BLOCK_W)
    if HEADS == 1:
        _update_head(state, row_scale, s_row, sc_row, smask, Bv, Cv, conv_row, xbc_row, xc_row, cw_ptr, cb_ptr,
                     dt_ptr, z_ptr, A_ptr, D_ptr, bias_ptr, y_ptr, nw_ptr, bi, h0, nheads, xc_heads, P, W, s_cs_c, s_cs_w,
                     s_dt_b, s_dt_h, s_z_b, s_ss_h, s_sc_h, s_y_b, sq_off, offs_p, mask_p,
                     A_IS_LOG, HAS_CONV_BIAS, HAS_D, HAS_Z, HAS_DT_BIAS, QUANT, BLOCK_W, STORE_CACHE, True, PRECONV,
                     DEFER_NORM, WORDS, BLOCK_N)
    else:
        # the group's B and C serve every head of the program; with STAGES > 1 the compiler stages the next
        # heads' state tiles through shared memory (asynchronous copies) while this one updates
        for hi in tl.range(h0, h0 + HEADS, num_stages=STAGES):
            state = tl.load(s_row + hi * s_ss_h, mask=smask, other=0.0, eviction_policy=LOAD_EVICT)
            row_scale = tl.zeros((BLOCK_P,), dtype=tl.float32)
            if QUANT:
                row_scale = tl.load(sc_row + hi * s_sc_h, mask=mask_p, other=0.0)
            _update_head(state, row_scale, s_row, sc_row, smask, Bv, Cv, conv_row, xbc_row, xc_row, cw_ptr, cb_ptr,
                         dt_ptr, z_ptr, A_ptr, D_ptr, bias_ptr, y_ptr, nw_ptr, bi, hi, nheads, xc_heads, P, W, s_cs_c, s_cs_w,
                         s_dt_b, s_dt_h, s_z_b, s_ss_h, s_sc_h, s_y_b, sq_off, offs_p, mask_p,
                         A_IS_LOG, HAS_CONV_BIAS, HAS_D, HAS_Z, HAS_DT_BIAS, QUANT, BLOCK_W, STORE_CACHE, False,
                         PRECONV, DEFER_NORM, WORDS, BLOCK_N)
        # the program's x windows shift once every head has read them: a barrier inside the loop would keep the
        # compiler from pipelining it (with one head the shift stays before the update: measured faster for an
        # int8 state, docs/benchmarks.md)
        if not PRECONV:
            offs_hp = tl.arange(0, HEADS * BLOCK_P)
            p_hp = pb * BLOCK_P + offs_hp % BLOCK_P
            _shift_windows(conv_row, xbc_row, s_cs_c, s_cs_w, (h0 + offs_hp // BLOCK_P) * P + p_hp, p_hp < P,
                           W, BLOCK_W)


@triton.jit
def _preconv_kernel(xbc_ptr, conv_ptr, cw_ptr, cb_ptr, xc_ptr, dt_ptr, bias_ptr, A_ptr, channels, nheads, W, s_xbc_b,
                    s_cs_b, s_cs_c, s_cs_w, s_xc_b, s_dt_b, s_dt_h, HAS_CONV_BIAS: tl.constexpr, BLOCK_C: tl.constexpr,
                    BLOCK_W: tl.constexpr, HEADS_DT: tl.constexpr, A_IS_LOG: tl.constexpr,
                    HAS_DT_BIAS: tl.constexpr, BLOCK_H: tl.constexpr, USE_PDL: tl.constexpr):
    """This token's x, B and C after conv + SiLU into ``xc`` (fp32), every window shifted: one program per (batch
    row, block of channels), so the state update that follows only loads them (``StepTile.preconv``). With
    ``HEADS_DT`` the first program of a row also writes each head's dt and decay after the channels (``_dt_log_decay``
    once a head, not once a thread of every program of the state update)."""
    if USE_PDL:  # in_proj's output complete; the state update may launch now and read its state tiles meanwhile
        gdc_wait()
        gdc_launch_dependents()
    bi = tl.program_id(0).to(tl.int64)
    chan = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = chan < channels
    out = _conv_shift(conv_ptr + bi * s_cs_b, xbc_ptr + bi * s_xbc_b, cw_ptr, cb_ptr, s_cs_c, s_cs_w, chan, mask, W,
                      HAS_CONV_BIAS, BLOCK_W)
    tl.store(xc_ptr + bi * s_xc_b + chan, out, mask=mask)
    if HEADS_DT:
        if tl.program_id(1) == 0:
            heads = tl.arange(0, BLOCK_H)
            mask_h = heads < nheads
            dt, log_decay = _dt_log_decay(tl.load(dt_ptr + bi * s_dt_b + heads * s_dt_h, mask=mask_h, other=0.0),
                                          bias_ptr, A_ptr, heads % nheads, A_IS_LOG, HAS_DT_BIAS)
            tl.store(xc_ptr + bi * s_xc_b + channels + heads, dt, mask=mask_h)
            tl.store(xc_ptr + bi * s_xc_b + channels + nheads + heads, tl.exp(log_decay), mask=mask_h)


@triton.jit
def _epilogue_kernel(
    y_ptr, nw_ptr, out_ptr, xbc_ptr, conv_ptr,
    d_inner, group_size, ngroups, N, W, eps,
    s_y_b, s_out_b, s_xbc_b, s_cs_b, s_cs_c, s_cs_w,
    HAS_NORM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
    SHIFT_BC: tl.constexpr,
):
    bi = tl.program_id(0).to(tl.int64)
    gi = tl.program_id(1)
    if HAS_NORM:
        offs = tl.arange(0, BLOCK_G)
        mask = offs < group_size
        cols = gi * group_size + offs
        y = tl.load(y_ptr + bi * s_y_b + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(y * y, axis=0) / group_size + eps)
        w = tl.load(nw_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + bi * s_out_b + cols, (y * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)
    if SHIFT_BC:
        offs_n = tl.arange(0, BLOCK_N)
        _shift_bc_windows(conv_ptr + bi * s_cs_b, xbc_ptr + bi * s_xbc_b, s_cs_c, s_cs_w, gi, ngroups, N, W, d_inner,
                          offs_n, offs_n < N, BLOCK_W)


class StepTile(NamedTuple):
    """How the state-update kernel splits its work: head dims a program (``block_p``), its warps, heads of one
    group a program (``heads``: B and C are convolved once for them), the pipeline depth of that loop over heads
    (``stages``: with 2 or more the compiler stages the next heads' state tiles through shared memory with
    asynchronous copies while one updates; 1: one tile at a time), and whether the state streams past the L2
    cache (``stream``: loads evicted first, stores marked streaming), and whether a launch before it convolves x, B
    and C once per row and shifts every window (``preconv``: the state update then only loads them, and the
    epilogue shifts nothing; a third launch a layer), a cap on the registers a thread (``max_registers``, 0:
    none; fewer registers, more programs an SM, at the price of spills), and whether a mixer whose norm has one
    group leaves its norm's per-row factor to the next block boundary (``defer_norm``, ``norm_torch.DeferredNorm``:
    with ``preconv`` no epilogue launch at all), and whether an int8 state is read and written as int32 words and
    updated in its scaled domain (``words``: about a quarter fewer instructions a value, rounding that differs
    from the byte path's within one quantum; ignored unless the state is int8 with a d_state that is a multiple
    of 4). Each state row is updated and read out within
    one program, so the state's values do not depend on the split (the interpreter checks give every split the
    same bits, for each choice of ``words``); on a GPU the warps may change the order in which y's sum over d_state
    rounds, and the rule keeps them fixed for every batch size."""

    block_p: int
    num_warps: int
    heads: int = 1
    stream: bool = False
    stages: int = 1
    preconv: bool = False
    max_registers: int = 0
    defer_norm: bool = False
    words: bool = False

    @classmethod
    def parse(cls, spec: str) -> StepTile:
        """``32x8``, ``64x8:stream``, ``32x8:h4:s2``, ``64x8:pc:r64:dn``: head dims x warps, then streaming, heads a
        program (``hN``), the pipeline depth of the loop over them (``sN``), the conv in its own launch (``pc``), a
        cap on registers a thread (``rN``), the norm deferred (``dn``) and an int8 state as words (``w``); a
        ValueError names the format."""
        head, *flags = spec.strip().split(":")
        try:
            block_p, warps = (int(v) for v in head.split("x"))
            heads = next((int(f[1:]) for f in flags if f.startswith("h")), 1)
            stages = next((int(f[1:]) for f in flags if f.startswith("s") and f != "stream"), 1)
            registers = next((int(f[1:]) for f in flags if f.startswith("r")), 0)
        except ValueError:
            raise ValueError(f"cannot read {spec!r}; write BLOCK_PxWARPS[:stream][:hN][:sN][:pc][:rN][:dn][:w], "
                             "e.g. 32x8:h4:s2") from None
        if any(f not in ("stream", "pc", "dn", "w") and f[:1] not in ("h", "s", "r") for f in flags):
            raise ValueError(f"unknown flag in {spec!r}; use stream, hN, sN, pc, rN, dn and w")
        return cls(block_p, warps, heads, "stream" in flags, stages, "pc" in flags, registers, "dn" in flags,
                   "w" in flags)


def _tile(rows: int, p: int, quant: bool = False) -> StepTile:
    """The state-update kernel's split for ``rows`` (batch x heads) tiles of ``p`` head dims (``quant``: an int8
    state): x, B and C convolved in their own launch first (``preconv``, which also computes each head's dt and
    decay once), then one head a program, the norm deferred to the block boundary (``defer_norm``: no epilogue
    launch); for bf16 eight warps and 32 head dims capped at 48 registers a thread (deferring adds the norm
    weight's load: 59 registers and four programs an SM uncapped, 48 and five with no spill), for int8 four warps
    and 32 head dims capped at 64 registers (eight programs an SM, no spill; ``scripts/step_resources.py``), the
    state as words (``words``).

    int8 as words, timed interleaved with the byte path in AiM-B's sampler on an H100
    (benchmarks/results/sampling_words_h100.json): the update 0.522 against 0.537 ms a step at batch 64 (81%
    against 79% of the copy bandwidth), 0.162 against 0.171 at batch 16; 201.5 against 199.5 images/s and 76.5
    against 75.1. Nsight Compute: 15% fewer instructions executed, 20.6 against 21.5 us a layer.

    int8, measured on an H100 in AiM-B's sampler with the conversion-free (de)quantisation, timed interleaved
    (benchmarks/results/sampling_int8_h100.json): 32x4 capped at 64 registers 189.1 images/s at batch 64 (the
    update 0.542 ms a step, 76% of the copy bandwidth), 64x4 185.0, 64x8 (the earlier rule) 170.7; at batch 16
    69.8, 70.0 and 64.7 (batch 16 rows spread by up to 8%); the swept state update alone over 24 layers
    (decode_tiles_int8_h100.json) ranks them alike. bf16: 32x4 and 64x4 measured no faster than the rule.

    The deferred norm, timed interleaved with the norm in its own launch on an H100
    (benchmarks/results/sampling_defer_h100.json): 62.5 against 60.7 images/s at batch 16 and 150.6 against
    146.7 at 64 (bf16), 61.1 against 58.8 and 155.9 against 153.9 (int8). With y and y^2 stored apart
    (sampling_defer_twostores_h100.json) the second store's layout conversion made the int8 update 10% slower
    (0.99x at batch 64), hence one store of the pair; uncapped, the bf16 update took 0.995 ms a step at batch 64
    against 0.913 capped.

    Measured on an H100 in AiM-B's sampler, timed interleaved with the earlier rule (the conv inside the state
    update, the state streamed past L2 below 2048 rows; benchmarks/results/sampling_preconv_h100.json): with
    nothing but loads before its update the kernel took 0.891 ms a step at batch 64 against 1.150 (bf16 state,
    91% of the copy bandwidth; 0.990 ms with the conv's launch) and 0.229 against 0.328 at batch 16. Earlier
    findings that still hold (sampling_split_h100.json, sampling_split_pipelined_h100.json): for bf16 four warps
    looked as fast in a sweep of 24 layers' decode steps alone but were up to 1.7x slower in the sampler, so the
    sampler decides; several heads a program, with the loop over them pipelined, ran 0.79-0.91x. A fixed rule
    rather than timing candidates at first use, which corrupted fp32 states on the H200 (docs/benchmarks.md) and
    would make the choice depend on the machine's load. Under the interpreter: small tiles, ``INTERP_HEADS``
    heads a program, the conv inside, an int8 state as words.
    """
    if INTERPRET:
        return StepTile(min(triton.next_power_of_2(p), 16), 4, INTERP_HEADS, defer_norm=True, words=quant)
    if quant:
        return StepTile(min(32, triton.next_power_of_2(p)), 4, preconv=True, max_registers=64, defer_norm=True,
                        words=True)
    return StepTile(min(32, triton.next_power_of_2(p)), 8, preconv=True, max_registers=48, defer_norm=True)


#: Set within ``split_rule``: the rule that replaces ``_tile``.
_override: Callable[[int, int, bool], StepTile] | None = None


@contextlib.contextmanager
def split_rule(rule: Callable[[int, int, bool], StepTile] | None) -> Iterator[None]:
    """Within the block the state-update kernel splits its work by ``rule(rows, p, quant)`` instead of the fixed
    rule (``None``: the fixed rule), to time or check other splits; a CUDA graph captured inside keeps them."""
    global _override
    saved, _override = _override, rule
    try:
        yield
    finally:
        _override = saved


def overridden_split(rows: int, p: int, quant: bool) -> StepTile | None:
    """The split ``split_rule`` sets for these arguments, or ``None`` outside one (for the other decode kernels,
    which have rules of their own)."""
    return None if _override is None else _override(rows, p, quant)


def _check_scale(ssm_state: Tensor, state_scale: Tensor | None) -> None:
    if state_scale is None:
        if ssm_state.dtype == torch.int8:
            raise ValueError("an int8 SSM state needs its per-row scales; pass state_scale (b, heads, headdim)")
        return
    if ssm_state.dtype != torch.int8 or state_scale.dtype != torch.float32 or \
            state_scale.shape != ssm_state.shape[:3]:
        raise ValueError(f"state_scale {state_scale.dtype} {tuple(state_scale.shape)} must be float32 "
                         f"{tuple(ssm_state.shape[:3])} beside an int8 state (got {ssm_state.dtype})")


def launch_preconv(xBC: Tensor, conv_state: Tensor, conv_weight: Tensor, conv_bias: Tensor | None,
                   heads: tuple[Tensor, Tensor | None, Tensor, bool] | None = None) -> Tensor:
    """This token's x, B and C after conv + SiLU (b, channels) in fp32, every conv window shifted in place; given
    ``heads = (dt, dt_bias, A, a_is_log)``, each head's dt (bias and softplus applied) and decay ``exp(dt * A)``
    follow in two more blocks of columns (b, channels + 2 * nheads)."""
    b, channels = xBC.shape
    nheads = heads[0].shape[1] if heads is not None else 0
    xc = torch.empty(b, channels + 2 * nheads, device=xBC.device, dtype=torch.float32)
    dt, dt_bias, A, a_is_log = heads if heads is not None else (xc, None, xc, False)
    block_c = min(256, triton.next_power_of_2(channels))
    _preconv_kernel[(b, triton.cdiv(channels, block_c))](
        xBC, conv_state, conv_weight, conv_bias if conv_bias is not None else conv_weight, xc, dt,
        dt_bias if dt_bias is not None else A, A, channels, max(nheads, 1), conv_state.shape[-1], xBC.stride(0),
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2), xc.stride(0), dt.stride(0), dt.stride(1),
        HAS_CONV_BIAS=conv_bias is not None, BLOCK_C=block_c, BLOCK_W=triton.next_power_of_2(conv_state.shape[-1]),
        HEADS_DT=heads is not None, A_IS_LOG=a_is_log, HAS_DT_BIAS=dt_bias is not None,
        BLOCK_H=triton.next_power_of_2(max(nheads, 1)), USE_PDL=use_pdl(), num_warps=4, **pdl_options())
    return xc


def _split_for(b: int, ssm_state: Tensor, state_scale: Tensor | None) -> StepTile:
    _, nheads, p, _ = ssm_state.shape
    return (_override or _tile)(b * nheads, p, state_scale is not None)


def words_strides(ssm_state: Tensor, state_scale: Tensor | None, want: bool = True) -> tuple[bool, tuple[int, ...]]:
    """Whether a kernel may read ``ssm_state`` as int32 words (``want``, an int8 state with its scales, a d_state
    that is a multiple of 4, rows contiguous and 4-byte aligned), and the state's strides as it then counts them
    (words, or elements)."""
    words = want and state_scale is not None and ssm_state.shape[-1] % 4 == 0 and ssm_state.stride(3) == 1 and \
        all(st % 4 == 0 for st in ssm_state.stride()[:3]) and ssm_state.data_ptr() % 4 == 0
    return words, (tuple(st // 4 for st in ssm_state.stride()[:3]) + (1,) if words else ssm_state.stride())


def _launch_step(xBC, dt, z, conv_state, conv_weight, conv_bias, ssm_state, A, a_is_log, D, dt_bias, y, ngroups,
                 state_scale=None, tile: StepTile | None = None, norm_weight: Tensor | None = None,
                 xc: Tensor | None = None) -> bool:
    """The state update (after the conv's own launch with ``StepTile.preconv``); returns whether the epilogue
    must still shift the B and C windows. ``norm_weight``: the norm deferred (``tile.defer_norm``), ``y`` (b,
    2 * d_inner) receiving y * silu(z) * norm_weight and then its unweighted squares. ``xc``: the conv's output,
    dt and decay already computed (``launch_preconv``'s layout, e.g. by ``triton_in_proj``), windows shifted."""
    b = xBC.shape[0]
    _, nheads, p, n = ssm_state.shape
    w = conv_state.shape[-1]
    _check_scale(ssm_state, state_scale)
    sc = state_scale if state_scale is not None else A
    sc_strides = state_scale.stride() if state_scale is not None else (0, 0, 0)
    flags = dict(
        A_IS_LOG=a_is_log, HAS_CONV_BIAS=conv_bias is not None, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_DT_BIAS=dt_bias is not None, QUANT=state_scale is not None, BLOCK_N=triton.next_power_of_2(n),
        BLOCK_W=triton.next_power_of_2(w),
    )

    tile = tile or _split_for(b, ssm_state, state_scale)
    if xc is not None:
        tile = tile._replace(preconv=True)
    heads = tile.heads if (nheads // ngroups) % tile.heads == 0 else 1  # a program's heads share one group
    words, s_strides = words_strides(ssm_state, state_scale, tile.words)
    if xc is None:
        xc = launch_preconv(xBC, conv_state, conv_weight, conv_bias, (dt, dt_bias, A, a_is_log)) if tile.preconv else xBC
    _step_kernel[(b, nheads // heads, triton.cdiv(p, tile.block_p))](
        xBC, xc, dt, z if z is not None else xBC, conv_state, conv_weight,
        conv_bias if conv_bias is not None else conv_weight, ssm_state, sc, A,
        D if D is not None else A, dt_bias if dt_bias is not None else A, y,
        norm_weight if norm_weight is not None else A,
        b, nheads, p, n, w, nheads * p,
        xBC.stride(0), xc.stride(0), dt.stride(0), dt.stride(1), z.stride(0) if z is not None else 0,
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        *s_strides,
        *sc_strides,
        y.stride(0), nheads * p, **flags, BLOCK_P=tile.block_p, HEADS=heads, STAGES=tile.stages,
        LOAD_EVICT="evict_first" if tile.stream else "", STORE_CACHE=".cs" if tile.stream else "",
        PRECONV=tile.preconv, DEFER_NORM=norm_weight is not None, USE_PDL=use_pdl(), HPG=nheads // ngroups,
        WORDS=words,
        num_warps=tile.num_warps,
        num_stages=1, **({"maxnreg": tile.max_registers} if tile.max_registers else {}), **pdl_options(),
    )
    return not tile.preconv


def _launch_epilogue(y, norm_weight, norm_eps, out, xBC, conv_state, ngroups, dstate, shift_bc=True):
    b, d_inner = y.shape
    group = d_inner // ngroups
    w = conv_state.shape[-1]
    _epilogue_kernel[(b, ngroups)](
        y, norm_weight if norm_weight is not None else y, out, xBC, conv_state,
        d_inner, group, ngroups, dstate, w, norm_eps,
        y.stride(0), out.stride(0), xBC.stride(0),
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        HAS_NORM=norm_weight is not None, BLOCK_G=triton.next_power_of_2(group),
        BLOCK_N=triton.next_power_of_2(dstate), BLOCK_W=triton.next_power_of_2(w), SHIFT_BC=shift_bc,
        num_warps=4 if group <= 2048 else 8,
    )


def fused_step_triton(
    xBC: Tensor,
    dt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    ssm_state: Tensor,
    A: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    z: Tensor | None,
    headdim: int,
    ngroups: int,
    state_scale: Tensor | None = None,
) -> Tensor:
    """Triton decode step; arguments as :func:`avgkit_mamba.ops.dispatch.fused_step`."""
    check_step_shapes(xBC, conv_state, conv_weight, ssm_state, headdim, ngroups)
    xBC, z = last_dim_contiguous(xBC), last_dim_contiguous(z)
    conv_weight = conv_weight.contiguous()
    y = torch.empty(xBC.shape[0], ssm_state.shape[1] * headdim, device=xBC.device, dtype=xBC.dtype)
    shift_bc = _launch_step(xBC, dt, z, conv_state, conv_weight, conv_bias, ssm_state, A, False, D, dt_bias, y,
                            ngroups, state_scale)
    _launch_epilogue(y, None, 0.0, y, xBC, conv_state, ngroups, ssm_state.shape[-1], shift_bc)
    return y


def decode_step_triton(
    zxbcdt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    ssm_state: Tensor,
    A_log: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    norm_weight: Tensor,
    norm_eps: float,
    headdim: int,
    ngroups: int,
    state_scale: Tensor | None = None,
) -> Tensor:
    """A mixer's whole step between ``in_proj`` and ``out_proj``, in two launches (three with the conv's own).

    ``zxbcdt`` (b, 2*d_inner + 2*ngroups*d_state + nheads) is the ``in_proj`` output,
    read in place (no split copies); returns ``rmsnorm(y * silu(z)) * norm_weight``
    (b, d_inner) in ``zxbcdt.dtype``, states updated in place (``state_scale`` beside an
    int8 ``ssm_state``, see :mod:`avgkit_mamba.ops.state_quant`).
    """
    return _decode_step(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias, norm_weight,
                        norm_eps, headdim, ngroups, state_scale, defer=False)[0]


def decode_step_deferred_triton(*args: Any, **kwargs: Any) -> tuple[Tensor, DeferredNorm | None]:
    """:func:`decode_step_triton` (same arguments) for a caller that can apply the norm's per-row factor itself.

    Where the split defers the norm (``StepTile.defer_norm``) and it has one group: returns ``y * silu(z) *
    norm_weight`` in ``zxbcdt.dtype`` (a view with rows twice as long: the squares of ``y * silu(z)`` follow it in
    the same dtype, the :class:`~avgkit_mamba.ops.norm_torch.DeferredNorm`'s ``sumsq``; no epilogue launch with
    ``preconv``); else the normed output and ``None``.
    """
    return _decode_step(*args, **kwargs, defer=True)


def decode_step_projected_triton(x: Tensor, in_proj_weight: Tensor, conv_state: Tensor, conv_weight: Tensor,
                                 conv_bias: Tensor | None, ssm_state: Tensor, A_log: Tensor, D: Tensor | None,
                                 dt_bias: Tensor | None, norm_weight: Tensor, norm_eps: float, headdim: int,
                                 ngroups: int, state_scale: Tensor | None = None) -> tuple[Tensor, DeferredNorm]:
    """:func:`decode_step_deferred_triton` from ``in_proj``'s input ``x`` (b, d_model): ``in_proj`` with the conv,
    dt and decay in its epilogue (:mod:`triton_in_proj`), then the state update, two launches; the norm deferred
    (one group only)."""
    from avgkit_mamba.ops.triton_in_proj import in_proj_conv_triton

    b = x.shape[0]
    _, nheads, p, n = ssm_state.shape
    d_inner = nheads * p
    if ngroups != 1 or headdim != p:
        raise ValueError(f"the projected decode step defers a norm of one group of head dim {p}; got ngroups "
                         f"{ngroups}, headdim {headdim}")
    z, xc = in_proj_conv_triton(x, in_proj_weight, conv_state, conv_weight, conv_bias, dt_bias, A_log, True, d_inner)
    out = torch.empty(b, 2 * d_inner, device=x.device, dtype=x.dtype)  # y * w | y^2
    _launch_step(xc, xc, z, conv_state, conv_weight, conv_bias, ssm_state, A_log, True, D, dt_bias, out, ngroups,
                 state_scale, None, norm_weight, xc=xc)
    return out[:, :d_inner], DeferredNorm(out[:, d_inner:], d_inner, norm_eps)


def _decode_step(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias, norm_weight, norm_eps,
                 headdim, ngroups, state_scale=None, *, defer: bool) -> tuple[Tensor, DeferredNorm | None]:
    zxbcdt = last_dim_contiguous(zxbcdt)
    b = zxbcdt.shape[0]
    _, nheads, p, n = ssm_state.shape
    d_inner = nheads * p
    z, xBC, dt = split_zxbcdt(zxbcdt, nheads, p, ngroups, n)
    check_step_shapes(xBC, conv_state, conv_weight, ssm_state, headdim, ngroups)
    tile = _split_for(b, ssm_state, state_scale)
    args = (xBC, dt, z, conv_state, conv_weight.contiguous(), conv_bias, ssm_state, A_log, True, D, dt_bias)
    if defer and tile.defer_norm and ngroups == 1:
        out = torch.empty(b, 2 * d_inner, device=zxbcdt.device, dtype=zxbcdt.dtype)  # y * w | y^2
        y = out[:, :d_inner]
        if _launch_step(*args, out, ngroups, state_scale, tile, norm_weight):
            _launch_epilogue(y, None, 0.0, y, xBC, conv_state, ngroups, n)  # the B/C windows' shift alone
        return y, DeferredNorm(out[:, d_inner:], d_inner, norm_eps)
    y = torch.empty(b, d_inner, device=zxbcdt.device, dtype=torch.float32)
    shift_bc = _launch_step(*args, y, ngroups, state_scale, tile)
    out = torch.empty(b, d_inner, device=zxbcdt.device, dtype=zxbcdt.dtype)
    _launch_epilogue(y, norm_weight, norm_eps, out, xBC, conv_state, ngroups, n, shift_bc)
    return out, None
