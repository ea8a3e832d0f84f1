"""A mixer's decode step in one launch per layer, laid out for bandwidth (not yet measured on a GPU).

The default step (:mod:`triton_step`) takes two launches per layer and one program per
(batch row, head, block of head-dim rows). This variant, selected by the backbone's
``step_kernel: one-launch``, differs in three ways:

* **One launch.** Each program convolves its x channels, updates its state rows, adds
  the D skip, gates with ``silu(z)`` and writes the fp32 result to a scratch row; then it
  increments its (batch row, group) counter with an acquire-release atomic. The program
  that arrives last (all others have finished reading the group's old B/C windows and
  written their outputs) computes the grouped RMSNorm of the whole group, shifts the
  group's B/C windows and resets the counter to zero, so the step can be replayed from a
  CUDA graph. The counters live in a zeroed buffer cached per (device, batch, groups).
* **More programs per state tile.** ``BLOCK_P`` head-dim rows per tile (whole rows of
  ``d_state``, so the one-byte state's row scales stay local to a program), smaller
  tiles giving more programs for small batches.
* **The next tile's load issued before the current update.** A program walks ``TILES``
  consecutive tiles of its head and loads tile ``t + 1`` (state and row scales) before it
  computes tile ``t``.

Reference: :func:`avgkit_mamba.ops.dispatch.decode_step_torch`; checked against it under
the interpreter (``tests/mamba_interpret_checks.py``, group ``fused``). The tile rule
(:func:`tile_rule`) is a starting point to be replaced by measured timings.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from avgkit_mamba.ops.ssd_torch import check_step_shapes, split_zxbcdt
from avgkit_mamba.ops.triton_common import (
    _conv_bc,
    _conv_out,
    _conv_window,
    _dequantize_rows,
    _dt_log_decay,
    _quantize_rows,
    _shift_bc_windows,
)
from avgkit_mamba.ops.triton_launch import INTERPRET, last_dim_contiguous
from avgkit_mamba.ops.triton_step import _check_scale

__all__ = ["decode_step_fused_triton", "tile_rule"]

_COUNTERS: dict[tuple, Tensor] = {}


@triton.jit
def _fused_step_kernel(
    xbc_ptr, dt_ptr, z_ptr, conv_ptr, cw_ptr, cb_ptr, ssm_ptr, scale_ptr, A_ptr, D_ptr, bias_ptr, nw_ptr,
    ybuf_ptr, out_ptr, cnt_ptr,
    hpg, P, N, W, d_inner, ngroups, eps, progs_per_group,
    s_xbc_b, s_dt_b, s_z_b,
    s_cs_b, s_cs_c, s_cs_w,
    s_ss_b, s_ss_h, s_ss_p, s_ss_n,
    s_sc_b, s_sc_h, s_sc_p,
    s_yb_b, s_out_b,
    HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, QUANT: tl.constexpr,
    BLOCK_P: tl.constexpr, TILES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    bi = tl.program_id(0).to(tl.int64)
    hi = tl.program_id(1)
    pc = tl.program_id(2)
    gi = hi // hpg
    offs_n = tl.arange(0, BLOCK_N)
    offs_w = tl.arange(0, BLOCK_W)
    mask_n = offs_n < N
    conv_row = conv_ptr + bi * s_cs_b
    xbc_row = xbc_ptr + bi * s_xbc_b
    ssm_head = ssm_ptr + bi * s_ss_b + hi * s_ss_h
    scale_head = scale_ptr + bi * s_sc_b + hi * s_sc_h
    p0 = pc * (TILES * BLOCK_P)

    # the first tile's load goes out before anything else
    offs_p = p0 + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    cur = tl.load(ssm_head + offs_p[:, None] * s_ss_p + offs_n[None, :] * s_ss_n,
                  mask=mask_p[:, None] & mask_n[None, :], other=0.0)
    if QUANT:
        cur_scale = tl.load(scale_head + offs_p * s_sc_p, mask=mask_p, other=0.0)

    dt, log_decay = _dt_log_decay(tl.load(dt_ptr + bi * s_dt_b + hi), bias_ptr, A_ptr, hi, True, HAS_DT_BIAS)
    decay = tl.exp(log_decay)
    # the group's B and C from their old windows (the last program of the group shifts them)
    Bv, Cv = _conv_bc(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, gi, ngroups, N, W, d_inner, offs_n, mask_n,
                      HAS_CONV_BIAS, BLOCK_W)
    if HAS_D:
        d_skip = tl.load(D_ptr + hi).to(tl.float32)

    for t in tl.static_range(TILES):
        offs_p = p0 + t * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        smask = mask_p[:, None] & mask_n[None, :]
        if t + 1 < TILES:  # issue the next tile's load before this tile's update
            offs_q = offs_p + BLOCK_P
            mask_q = offs_q < P
            nxt = tl.load(ssm_head + offs_q[:, None] * s_ss_p + offs_n[None, :] * s_ss_n,
                          mask=mask_q[:, None] & mask_n[None, :], other=0.0)
            if QUANT:
                nxt_scale = tl.load(scale_head + offs_q * s_sc_p, mask=mask_q, other=0.0)
        # this tile's x channels: shift their window (theirs alone), convolve
        chan_x = hi * P + offs_p
        win_x = _conv_window(conv_row, s_cs_c, s_cs_w, chan_x, mask_p, xbc_row, W, BLOCK_W)
        x = _conv_out(win_x, cw_ptr, cb_ptr, chan_x, mask_p, W, HAS_CONV_BIAS, BLOCK_W)
        tl.debug_barrier()  # the old window is read before it is overwritten (triton_common's docstring)
        tl.store(conv_row + chan_x[:, None] * s_cs_c + offs_w[None, :] * s_cs_w, win_x,
                 mask=mask_p[:, None] & (offs_w[None, :] < W))
        s_ptrs = ssm_head + offs_p[:, None] * s_ss_p + offs_n[None, :] * s_ss_n
        if QUANT:
            state = _dequantize_rows(cur, cur_scale) * decay + (dt * x)[:, None] * Bv[None, :]
            q, new_scale = _quantize_rows(state)
            tl.store(s_ptrs, q, mask=smask)
            tl.store(scale_head + offs_p * s_sc_p, new_scale, mask=mask_p)
        else:
            state = cur.to(tl.float32) * decay + (dt * x)[:, None] * Bv[None, :]
            tl.store(s_ptrs, state.to(ssm_ptr.dtype.element_ty), mask=smask)
        y = tl.sum(state * Cv[None, :], axis=1)
        if HAS_D:
            y += d_skip * x
        zz = tl.load(z_ptr + bi * s_z_b + chan_x, mask=mask_p, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
        tl.store(ybuf_ptr + bi * s_yb_b + chan_x, y, mask=mask_p)
        if t + 1 < TILES:
            cur = nxt
            if QUANT:
                cur_scale = nxt_scale

    # arrive; the group's last program normalises its outputs and shifts its B/C windows
    cnt = cnt_ptr + bi * ngroups + gi
    arrived = tl.atomic_add(cnt, 1, sem="acq_rel")
    if arrived == progs_per_group - 1:
        group = hpg * P
        offs_g = tl.arange(0, BLOCK_G)
        mask_g = offs_g < group
        cols = gi * group + offs_g
        yg = tl.load(ybuf_ptr + bi * s_yb_b + cols, mask=mask_g, other=0.0, cache_modifier=".cg")
        rstd = tl.rsqrt(tl.sum(yg * yg, axis=0) / group + eps)
        w = tl.load(nw_ptr + cols, mask=mask_g, other=0.0).to(tl.float32)
        tl.store(out_ptr + bi * s_out_b + cols, (yg * rstd * w).to(out_ptr.dtype.element_ty), mask=mask_g)
        _shift_bc_windows(conv_row, xbc_row, s_cs_c, s_cs_w, gi, ngroups, N, W, d_inner, offs_n, mask_n, BLOCK_W)
        tl.atomic_xchg(cnt, 0, sem="relaxed")


def tile_rule(rows: int, p: int) -> tuple[int, int, int]:
    """(BLOCK_P, TILES, num_warps) for ``rows`` = batch x heads; unmeasured starting point.

    Small grids: 8-row tiles, one per program (the most programs); large grids: 16-row
    tiles, two per program so each program has the next load in flight.
    """
    if INTERPRET:
        return min(triton.next_power_of_2(p), 8), 1 if p <= 8 else 2, 4
    block_p, tiles, warps = (8, 1, 2) if rows < 2048 else (16, 2, 4)
    return min(block_p, triton.next_power_of_2(p)), tiles, warps


def _counters(device: torch.device, b: int, ngroups: int) -> Tensor:
    """Zeroed arrival counters, one per (batch row, group); the kernel leaves them zero."""
    key = (str(device), b, ngroups)
    if key not in _COUNTERS:
        _COUNTERS[key] = torch.zeros(b * ngroups, device=device, dtype=torch.int32)
    return _COUNTERS[key]


def decode_step_fused_triton(
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
    *,
    block_p: int | None = None,
    tiles: int | None = None,
    num_warps: int | None = None,
) -> Tensor:
    """One launch per layer; arguments and result as :func:`avgkit_mamba.ops.triton_step.decode_step_triton`.

    ``block_p``, ``tiles`` and ``num_warps`` override :func:`tile_rule` (for tile sweeps).
    """
    zxbcdt = last_dim_contiguous(zxbcdt)
    b = zxbcdt.shape[0]
    _, nheads, p, n = ssm_state.shape
    d_inner = nheads * p
    z, xBC, dt = split_zxbcdt(zxbcdt, nheads, p, ngroups, n)
    check_step_shapes(xBC, conv_state, conv_weight, ssm_state, headdim, ngroups)
    _check_scale(ssm_state, state_scale)
    rule_p, rule_tiles, rule_warps = tile_rule(b * nheads, p)
    block_p, tiles, warps = block_p or rule_p, tiles or rule_tiles, num_warps or rule_warps
    if block_p & (block_p - 1) or tiles < 1:
        raise ValueError(f"block_p {block_p} must be a power of two and tiles {tiles} at least 1")
    chunks = triton.cdiv(p, block_p * tiles)
    w = conv_state.shape[-1]
    hpg = nheads // ngroups
    ybuf = torch.empty(b, d_inner, device=zxbcdt.device, dtype=torch.float32)
    out = torch.empty(b, d_inner, device=zxbcdt.device, dtype=zxbcdt.dtype)
    sc = state_scale if state_scale is not None else A_log
    sc_strides = state_scale.stride() if state_scale is not None else (0, 0, 0)
    conv_weight = conv_weight.contiguous()
    _fused_step_kernel[(b, nheads, chunks)](
        xBC, dt, z, conv_state, conv_weight, conv_bias if conv_bias is not None else conv_weight, ssm_state, sc,
        A_log, D if D is not None else A_log, dt_bias if dt_bias is not None else A_log, norm_weight,
        ybuf, out, _counters(zxbcdt.device, b, ngroups),
        hpg, p, n, w, d_inner, ngroups, norm_eps, hpg * chunks,
        xBC.stride(0), dt.stride(0), z.stride(0),
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        *ssm_state.stride(), *sc_strides,
        ybuf.stride(0), out.stride(0),
        HAS_CONV_BIAS=conv_bias is not None, HAS_D=D is not None, HAS_DT_BIAS=dt_bias is not None,
        QUANT=state_scale is not None, BLOCK_P=block_p, TILES=tiles, BLOCK_N=triton.next_power_of_2(n),
        BLOCK_W=triton.next_power_of_2(w), BLOCK_G=triton.next_power_of_2(hpg * p), num_warps=warps, num_stages=1,
    )
    return out
