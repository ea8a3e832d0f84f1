"""Triton kernels for the chunked SSD scan (Mamba-2), forward and backward.

Same arguments and results as :func:`avgkit_mamba.ops.ssd_torch.ssd_chunk_scan` (the
oracle). Notation per batch ``b``, chunk ``c`` of ``Q`` positions, head ``h`` (group
``g``); ``dt`` is the processed step (bias + softplus) and ``acs`` the cumulative sum
of ``dt * A`` inside the chunk::

    y_t = exp(acs_t) C_t H_c  +  sum_{s<=t} (C_t . B_s) exp(acs_t - acs_s) dt_s x_s  (+ D x_t)
    S_c = sum_s exp(acs_last - acs_s) dt_s x_s B_s^T       (state a chunk adds)
    H_{c+1} = exp(acs_last) H_c + S_c                       (state entering chunk c+1)

Forward kernels: dt/cumsum, ``CB = C B^T`` per group, [chunk states, state passing],
chunk scan. The state kernels run only when there is more than one chunk, an initial
state or a requested final state, so a training step over one chunk skips them.

Backward: ``dCB`` (summed over the heads of a group, so ``dB``/``dC`` need no per-head
buffers) with the intra-chunk part of ``d acs``; ``dB`` and ``dC`` from ``dCB``; ``dx``
with the direct part of ``d dt``; then one kernel turns ``d acs`` into ``d dt``, ``dA``
and ``d dt_bias``. All accumulation is fp32; matmul operands are in the input dtype
(fp32 inputs use exact fp32 products, not TF32).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from avgkit_mamba.ops.ssd_torch import check_scan_shapes
from avgkit_mamba.ops.triton_common import _softplus
from avgkit_mamba.ops.triton_launch import INTERPRET, Launcher, Meta, last_dim_contiguous

__all__ = ["chunk_scan_triton"]


# ----------------------------------------------------------------------------- helpers


def _p2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _interp_block(n: int, cap: int = 16) -> int:
    """Small power-of-two block for the interpreter (fast on CPU, fits tiny shapes)."""
    return min(_p2(n), cap)


# ----------------------------------------------------------------------------- forward


@triton.jit
def _dt_cumsum_kernel(
    dt_ptr, A_ptr, bias_ptr, dtp_ptr, acs_ptr,
    seqlen, nheads, nchunks, Q,
    s_dt_b, s_dt_l, s_dt_h,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    bi = tl.program_id(0).to(tl.int64)
    ci = tl.program_id(1)
    offs_h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_q = tl.arange(0, BLOCK_Q)
    pos = ci * Q + offs_q
    mask_h = offs_h < nheads
    in_chunk = mask_h[:, None] & (offs_q[None, :] < Q)
    valid = in_chunk & (pos[None, :] < seqlen)
    dt = tl.load(dt_ptr + bi * s_dt_b + pos[None, :] * s_dt_l + offs_h[:, None] * s_dt_h, mask=valid, other=0.0)
    dt = dt.to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)[:, None]
    if SOFTPLUS:
        dt = _softplus(dt)
    # padded positions get dt = 0: no decay, no input, so the chunk's end state is unchanged
    dt = tl.where(valid, dt, 0.0)
    A = tl.load(A_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    acs = tl.cumsum(dt * A[:, None], axis=1)
    out = ((bi * nheads + offs_h[:, None]) * nchunks + ci) * Q + offs_q[None, :]
    tl.store(dtp_ptr + out, dt, mask=in_chunk)
    tl.store(acs_ptr + out, acs, mask=in_chunk)


@triton.jit
def _cb_kernel(
    C_ptr, B_ptr, cb_ptr,
    seqlen, nchunks, ngroups, Q, N,
    s_c_b, s_c_l, s_c_g, s_c_n, s_b_b, s_b_l, s_b_g, s_b_n,
    PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """CB[b,c,g,t,s] = C_t . B_s for the tiles touching s <= t (fp32)."""
    pid = tl.program_id(0)
    gi = pid % ngroups
    bi = (pid // ngroups // nchunks).to(tl.int64)
    ci = (pid // ngroups) % nchunks
    mb = tl.program_id(1)
    sb = tl.program_id(2)
    if sb * BLOCK_S >= (mb + 1) * BLOCK_M:
        return
    chunk_len = tl.minimum(Q, seqlen - ci * Q)
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_s = sb * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_n = tl.arange(0, BLOCK_N)
    c_base = C_ptr + bi * s_c_b + (ci * Q) * s_c_l + gi * s_c_g
    b_base = B_ptr + bi * s_b_b + (ci * Q) * s_b_l + gi * s_b_g
    acc = tl.zeros((BLOCK_M, BLOCK_S), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + offs_n
        c = tl.load(c_base + offs_m[:, None] * s_c_l + nn[None, :] * s_c_n,
                    mask=(offs_m[:, None] < chunk_len) & (nn[None, :] < N), other=0.0)
        bt = tl.load(b_base + offs_s[None, :] * s_b_l + nn[:, None] * s_b_n,
                     mask=(offs_s[None, :] < chunk_len) & (nn[:, None] < N), other=0.0)
        acc += tl.dot(c, bt, input_precision=PREC)
    out = cb_ptr + ((bi * nchunks + ci) * ngroups + gi) * Q * Q
    tl.store(out + offs_m[:, None] * Q + offs_s[None, :], acc,
             mask=(offs_m[:, None] < Q) & (offs_s[None, :] < Q))


@triton.jit
def _chunk_state_kernel(
    u_ptr, v_ptr, dtp_ptr, acs_ptr, out_ptr,
    seqlen, nheads, nchunks, hpg, Q, P, N,
    s_u_b, s_u_l, s_u_h, s_u_p, s_v_b, s_v_l, s_v_g, s_v_n,
    TO_END: tl.constexpr, PREC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[b,c,h] = sum_t w_t u_t^T v_t  (P, N), fp32.

    TO_END: w = exp(acs_last - acs) dt (u = x, v = B: the state a chunk adds);
    otherwise w = exp(acs) (u = dy, v = C: gradient of the state entering the chunk).
    """
    pid = tl.program_id(0)
    hi = pid % nheads
    ci = (pid // nheads) % nchunks
    bi = (pid // nheads // nchunks).to(tl.int64)
    gi = hi // hpg
    n_nb = tl.cdiv(N, BLOCK_N)
    pb = tl.program_id(1) // n_nb
    nb = tl.program_id(1) % n_nb
    chunk_len = tl.minimum(Q, seqlen - ci * Q)
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    u_base = u_ptr + bi * s_u_b + (ci * Q) * s_u_l + hi * s_u_h
    v_base = v_ptr + bi * s_v_b + (ci * Q) * s_v_l + gi * s_v_g
    a_base = ((bi * nheads + hi) * nchunks + ci) * Q
    acs_last = tl.load(acs_ptr + a_base + Q - 1)
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, chunk_len, BLOCK_K):
        kk = k0 + offs_k
        km = kk < chunk_len
        ut = tl.load(u_base + offs_p[:, None] * s_u_p + kk[None, :] * s_u_l,
                     mask=(offs_p[:, None] < P) & km[None, :], other=0.0)
        v = tl.load(v_base + kk[:, None] * s_v_l + offs_n[None, :] * s_v_n,
                    mask=km[:, None] & (offs_n[None, :] < N), other=0.0)
        acs_k = tl.load(acs_ptr + a_base + kk, mask=km, other=0.0)
        if TO_END:
            w = tl.exp(acs_last - acs_k) * tl.load(dtp_ptr + a_base + kk, mask=km, other=0.0)
        else:
            w = tl.exp(acs_k)
        w = tl.where(km, w, 0.0)
        v = (v.to(tl.float32) * w[:, None]).to(ut.dtype)
        acc += tl.dot(ut, v, input_precision=PREC)
    out = out_ptr + ((bi * nchunks + ci) * nheads + hi) * P * N
    tl.store(out + offs_p[:, None] * N + offs_n[None, :], acc,
             mask=(offs_p[:, None] < P) & (offs_n[None, :] < N))


@triton.jit
def _state_passing_fwd_kernel(
    states_ptr, acs_ptr, init_ptr, entering_ptr, final_ptr,
    nheads, nchunks, Q, dim,
    HAS_INIT: tl.constexpr, BLOCK: tl.constexpr,
):
    """states[b,c,h] (chunk's own state) -> entering[b,c,h] (state entering chunk c); final out.

    Never in place: a program's load and store of one address may be done by different
    threads (the layouts of an fp32 and a bf16 load differ), and nothing orders them, so an
    in-place version read states it had already overwritten, differently from call to call.
    """
    bh = tl.program_id(0)
    hi = bh % nheads
    bi = (bh // nheads).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < dim
    if HAS_INIT:
        h_state = tl.load(init_ptr + (bi * nheads + hi) * dim + offs, mask=m, other=0.0).to(tl.float32)
    else:
        h_state = tl.zeros((BLOCK,), dtype=tl.float32)
    for ci in range(0, nchunks):
        off = ((bi * nchunks + ci) * nheads + hi) * dim + offs
        own = tl.load(states_ptr + off, mask=m, other=0.0)
        tl.store(entering_ptr + off, h_state, mask=m)
        decay = tl.exp(tl.load(acs_ptr + ((bi * nheads + hi) * nchunks + ci) * Q + Q - 1))
        h_state = decay * h_state + own
    tl.store(final_ptr + (bi * nheads + hi) * dim + offs, h_state, mask=m)


@triton.jit
def _chunk_scan_fwd_kernel(
    cb_ptr, x_ptr, z_ptr, dtp_ptr, acs_ptr, C_ptr, states_ptr, D_ptr, out_ptr, ypre_ptr,
    seqlen, nheads, nchunks, ngroups, hpg, Q, P, N,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_z_b, s_z_l, s_z_h, s_z_p,
    s_o_b, s_o_l, s_o_h, s_o_p,
    s_c_b, s_c_l, s_c_g, s_c_n,
    HAS_STATES: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    hi = pid % nheads
    ci = (pid // nheads) % nchunks
    bi = (pid // nheads // nchunks).to(tl.int64)
    gi = hi // hpg
    mb = tl.program_id(1)
    pb = tl.program_id(2)
    chunk_len = tl.minimum(Q, seqlen - ci * Q)
    if mb * BLOCK_M >= chunk_len:
        return
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < chunk_len
    mask_p = offs_p < P
    a_base = ((bi * nheads + hi) * nchunks + ci) * Q
    acs_m = tl.load(acs_ptr + a_base + offs_m, mask=offs_m < Q, other=0.0)
    x_base = x_ptr + bi * s_x_b + (ci * Q) * s_x_l + hi * s_x_h

    acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    if HAS_STATES:
        # exp(acs_t) C_t H_c, H_c the state entering this chunk
        c_base = C_ptr + bi * s_c_b + (ci * Q) * s_c_l + gi * s_c_g
        st_base = states_ptr + ((bi * nchunks + ci) * nheads + hi) * P * N
        offs_n = tl.arange(0, BLOCK_N)
        for n0 in range(0, N, BLOCK_N):
            nn = n0 + offs_n
            c = tl.load(c_base + offs_m[:, None] * s_c_l + nn[None, :] * s_c_n,
                        mask=mask_m[:, None] & (nn[None, :] < N), other=0.0)
            st = tl.load(st_base + offs_p[None, :] * N + nn[:, None],
                         mask=mask_p[None, :] & (nn[:, None] < N), other=0.0)
            acc += tl.dot(c, st.to(c.dtype), input_precision=PREC)
        acc = acc * tl.exp(acs_m)[:, None]

    cb_base = cb_ptr + ((bi * nchunks + ci) * ngroups + gi) * Q * Q
    hi_end = tl.minimum((mb + 1) * BLOCK_M, chunk_len)
    for k0 in range(0, hi_end, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < chunk_len
        causal = (offs_m[:, None] >= kk[None, :]) & mask_k[None, :] & mask_m[:, None]
        cb = tl.load(cb_base + offs_m[:, None] * Q + kk[None, :], mask=causal, other=0.0)
        acs_k = tl.load(acs_ptr + a_base + kk, mask=mask_k, other=0.0)
        dt_k = tl.load(dtp_ptr + a_base + kk, mask=mask_k, other=0.0)
        decay = tl.exp(tl.where(causal, acs_m[:, None] - acs_k[None, :], float("-inf")))
        w = tl.where(causal, cb * decay * dt_k[None, :], 0.0)
        xk = tl.load(x_base + kk[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                     mask=mask_k[:, None] & mask_p[None, :], other=0.0)
        acc += tl.dot(w.to(xk.dtype), xk, input_precision=PREC)

    mask_mp = mask_m[:, None] & mask_p[None, :]
    if HAS_D:
        xm = tl.load(x_base + offs_m[:, None] * s_x_l + offs_p[None, :] * s_x_p, mask=mask_mp, other=0.0)
        acc += xm.to(tl.float32) * tl.load(D_ptr + hi).to(tl.float32)
    o_off = bi * s_o_b + (ci * Q + offs_m[:, None]) * s_o_l + hi * s_o_h + offs_p[None, :] * s_o_p
    if HAS_Z:
        tl.store(ypre_ptr + o_off, acc.to(ypre_ptr.dtype.element_ty), mask=mask_mp)
        zz = tl.load(z_ptr + bi * s_z_b + (ci * Q + offs_m[:, None]) * s_z_l + hi * s_z_h + offs_p[None, :] * s_z_p,
                     mask=mask_mp, other=0.0).to(tl.float32)
        acc = acc * zz * tl.sigmoid(zz)
    tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=mask_mp)


# ----------------------------------------------------------------------------- backward


@triton.jit
def _state_passing_bwd_kernel(
    g_ptr, states_ptr, acs_ptr, dfinal_ptr, dinit_ptr, dlast_ptr, dout_ptr,
    nheads, nchunks, Q, dim,
    HAS_DFINAL: tl.constexpr, HAS_DINIT: tl.constexpr, BLOCK: tl.constexpr,
):
    """g[b,c,h] (grad of H_c from the outputs) -> dout[b,c,h], the grad of S_c (= grad of H_{c+1}).

    Not in place, for the reason the forward pass is not.

    Also the grad of acs_last of each chunk through the passing (partial per block)
    and of the initial state.
    """
    bh = tl.program_id(0)
    hi = bh % nheads
    bi = (bh // nheads).to(tl.int64)
    blk = tl.program_id(1)
    nblk = tl.num_programs(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < dim
    if HAS_DFINAL:
        dh = tl.load(dfinal_ptr + (bi * nheads + hi) * dim + offs, mask=m, other=0.0).to(tl.float32)
    else:
        dh = tl.zeros((BLOCK,), dtype=tl.float32)
    for cc in range(0, nchunks):
        ci = nchunks - 1 - cc
        off = ((bi * nchunks + ci) * nheads + hi) * dim + offs
        g = tl.load(g_ptr + off, mask=m, other=0.0)
        h_in = tl.load(states_ptr + off, mask=m, other=0.0)
        a_idx = (bi * nheads + hi) * nchunks + ci
        decay = tl.exp(tl.load(acs_ptr + a_idx * Q + Q - 1))
        tl.store(dlast_ptr + a_idx * nblk + blk, decay * tl.sum(dh * h_in, axis=0))
        tl.store(dout_ptr + off, dh, mask=m)
        dh = g + decay * dh
    if HAS_DINIT:
        tl.store(dinit_ptr + (bi * nheads + hi) * dim + offs, dh, mask=m)


@triton.jit
def _dcb_kernel(
    x_ptr, dy_ptr, cb_ptr, dtp_ptr, acs_ptr, dcb_ptr, dacs_ptr,
    seqlen, nheads, nchunks, ngroups, hpg, Q, P, n_slots, split, heads_per_part,
    s_x_b, s_x_l, s_x_h, s_x_p, s_y_b, s_y_l, s_y_h, s_y_p,
    PREC: tl.constexpr, ONE_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """dCB[t,s] = sum_heads dt_s exp(acs_t - acs_s) (dy_t . x_s), s <= t (fp32).

    The group's heads are split into ``split`` parts, one program each, so that a tile's
    programs do not loop over every head in turn; each part writes its partial sum to
    its own slice of dcb (b,c,g,split,Q,Q), which the host sums (no atomics: the same
    order every run).
    Also the intra-chunk part of d acs per head: with W = dCB_head * CB (s < t),
    d acs_t += sum_s W[t,s] and d acs_s -= sum_t W[t,s]. Tile (i, j) writes its row
    sums into slot j and its column sums into slot i of dacs (b,h,c,slot,Q), so each
    (slot, position) is written by exactly one tile and no atomics are needed.
    """
    pid = tl.program_id(0)
    part = pid % split
    gi = (pid // split) % ngroups
    ci = (pid // split // ngroups) % nchunks
    bi = (pid // split // ngroups // nchunks).to(tl.int64)
    mb = tl.program_id(1)
    sb = tl.program_id(2)
    if sb > mb:
        return
    chunk_len = tl.minimum(Q, seqlen - ci * Q)
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_s = sb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = tl.arange(0, BLOCK_P)
    mask_m = offs_m < chunk_len
    mask_s = offs_s < chunk_len
    valid = mask_m[:, None] & mask_s[None, :]
    causal = valid & (offs_m[:, None] >= offs_s[None, :])
    strict = valid & (offs_m[:, None] > offs_s[None, :])
    cb = tl.load(cb_ptr + ((bi * nchunks + ci) * ngroups + gi) * Q * Q + offs_m[:, None] * Q + offs_s[None, :],
                 mask=strict, other=0.0)
    dcb = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    for hh in range(part * heads_per_part, tl.minimum((part + 1) * heads_per_part, hpg)):
        hi = gi * hpg + hh
        x_base = x_ptr + bi * s_x_b + (ci * Q) * s_x_l + hi * s_x_h
        y_base = dy_ptr + bi * s_y_b + (ci * Q) * s_y_l + hi * s_y_h
        if ONE_P:  # a head's whole P in one tile: the head loop is innermost, so its loads are pipelined
            dyt = tl.load(y_base + offs_m[:, None] * s_y_l + offs_p[None, :] * s_y_p,
                          mask=mask_m[:, None] & (offs_p[None, :] < P), other=0.0)
            xst = tl.load(x_base + offs_s[None, :] * s_x_l + offs_p[:, None] * s_x_p,
                          mask=mask_s[None, :] & (offs_p[:, None] < P), other=0.0)
            prod = tl.dot(dyt, xst.to(dyt.dtype), input_precision=PREC)
        else:
            prod = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
            for p0 in range(0, P, BLOCK_P):
                pp = p0 + offs_p
                dyt = tl.load(y_base + offs_m[:, None] * s_y_l + pp[None, :] * s_y_p,
                              mask=mask_m[:, None] & (pp[None, :] < P), other=0.0)
                xst = tl.load(x_base + offs_s[None, :] * s_x_l + pp[:, None] * s_x_p,
                              mask=mask_s[None, :] & (pp[:, None] < P), other=0.0)
                prod += tl.dot(dyt, xst.to(dyt.dtype), input_precision=PREC)
        a_base = ((bi * nheads + hi) * nchunks + ci) * Q
        acs_m = tl.load(acs_ptr + a_base + offs_m, mask=mask_m, other=0.0)
        acs_s = tl.load(acs_ptr + a_base + offs_s, mask=mask_s, other=0.0)
        dt_s = tl.load(dtp_ptr + a_base + offs_s, mask=mask_s, other=0.0)
        decay = tl.exp(tl.where(causal, acs_m[:, None] - acs_s[None, :], float("-inf")))
        wd = tl.where(causal, prod * decay * dt_s[None, :], 0.0)
        dcb += wd
        w = wd * cb
        rows = tl.sum(w, axis=1)
        cols = tl.sum(w, axis=0)
        slot_base = dacs_ptr + (((bi * nheads + hi) * nchunks + ci) * n_slots) * Q
        if mb == sb:
            tl.store(slot_base + mb * Q + offs_m, rows - cols, mask=offs_m < Q)
        else:
            tl.store(slot_base + sb * Q + offs_m, rows, mask=offs_m < Q)
            tl.store(slot_base + mb * Q + offs_s, -cols, mask=offs_s < Q)
    tl.store(dcb_ptr + (((bi * nchunks + ci) * ngroups + gi) * split + part) * Q * Q + offs_m[:, None] * Q
             + offs_s[None, :], dcb, mask=(offs_m[:, None] < Q) & (offs_s[None, :] < Q))


@triton.jit
def _dbc_kernel(
    dcb_ptr, v_ptr, out_ptr, u_ptr, st_ptr, self_ptr, dtp_ptr, acs_ptr, dacs_st_ptr,
    seqlen, nheads, nchunks, ngroups, hpg, Q, P, N,
    s_v_b, s_v_l, s_v_g, s_v_n,
    s_o_b, s_o_l, s_o_g, s_o_n,
    s_u_b, s_u_l, s_u_h, s_u_p,
    s_s_b, s_s_l, s_s_g, s_s_n,
    IS_DB: tl.constexpr, HAS_STATES: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """dB (IS_DB) or dC for one group and a block of positions, summed over its heads.

    dB_s = sum_{t>=s} dCB[t,s] C_t  + sum_h exp(acs_last - acs_s) dt_s x_s^T dS_h
    dC_t = sum_{s<=t} dCB[t,s] B_s  + sum_h exp(acs_t) dy_t^T H_h
    With states, also the per-head d acs terms (term . B_s) or (term . C_t).
    """
    pid = tl.program_id(0)
    gi = pid % ngroups
    ci = (pid // ngroups) % nchunks
    bi = (pid // ngroups // nchunks).to(tl.int64)
    mb = tl.program_id(1)
    chunk_len = tl.minimum(Q, seqlen - ci * Q)
    if mb * BLOCK_M >= chunk_len:
        return
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < chunk_len
    mask_n = offs_n < N
    dcb_base = dcb_ptr + ((bi * nchunks + ci) * ngroups + gi) * Q * Q
    v_base = v_ptr + bi * s_v_b + (ci * Q) * s_v_l + gi * s_v_g
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if IS_DB:
        k_start = (mb * BLOCK_M // BLOCK_K) * BLOCK_K
        k_end = chunk_len
    else:
        k_start = 0
        k_end = tl.minimum((mb + 1) * BLOCK_M, chunk_len)
    for k0 in range(k_start, k_end, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < chunk_len
        if IS_DB:  # rows s = offs_m, columns t = kk, t >= s
            causal = mask_m[:, None] & mask_k[None, :] & (kk[None, :] >= offs_m[:, None])
            d = tl.load(dcb_base + kk[None, :] * Q + offs_m[:, None], mask=causal, other=0.0)
        else:  # rows t = offs_m, columns s = kk, s <= t
            causal = mask_m[:, None] & mask_k[None, :] & (kk[None, :] <= offs_m[:, None])
            d = tl.load(dcb_base + offs_m[:, None] * Q + kk[None, :], mask=causal, other=0.0)
        d = tl.where(causal, d, 0.0)
        vk = tl.load(v_base + kk[:, None] * s_v_l + offs_n[None, :] * s_v_n,
                     mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc += tl.dot(d.to(vk.dtype), vk, input_precision=PREC)
    if HAS_STATES:
        selfm = tl.load(self_ptr + bi * s_s_b + (ci * Q + offs_m[:, None]) * s_s_l + gi * s_s_g + offs_n[None, :] * s_s_n,
                        mask=mask_m[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
        offs_p = tl.arange(0, BLOCK_P)
        for hh in range(0, hpg):
            hi = gi * hpg + hh
            a_base = ((bi * nheads + hi) * nchunks + ci) * Q
            acs_m = tl.load(acs_ptr + a_base + offs_m, mask=mask_m, other=0.0)
            if IS_DB:
                acs_last = tl.load(acs_ptr + a_base + Q - 1)
                w = tl.exp(acs_last - acs_m) * tl.load(dtp_ptr + a_base + offs_m, mask=mask_m, other=0.0)
            else:
                w = tl.exp(acs_m)
            u_base = u_ptr + bi * s_u_b + (ci * Q) * s_u_l + hi * s_u_h
            st_base = st_ptr + ((bi * nchunks + ci) * nheads + hi) * P * N
            term = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for p0 in range(0, P, BLOCK_P):
                pp = p0 + offs_p
                um = tl.load(u_base + offs_m[:, None] * s_u_l + pp[None, :] * s_u_p,
                             mask=mask_m[:, None] & (pp[None, :] < P), other=0.0)
                st = tl.load(st_base + pp[:, None] * N + offs_n[None, :],
                             mask=(pp[:, None] < P) & mask_n[None, :], other=0.0)
                term += tl.dot(um, st.to(um.dtype), input_precision=PREC)
            term = term * w[:, None]
            acc += term
            tl.store(dacs_st_ptr + a_base + offs_m, tl.sum(term * selfm, axis=1), mask=mask_m)
    tl.store(out_ptr + bi * s_o_b + (ci * Q + offs_m[:, None]) * s_o_l + gi * s_o_g + offs_n[None, :] * s_o_n,
             acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _dx_kernel(
    cb_ptr, dy_ptr, x_ptr, dtp_ptr, acs_ptr, B_ptr, ds_ptr, D_ptr, dx_ptr, ddt_ptr, dD_ptr,
    seqlen, nheads, nchunks, ngroups, hpg, Q, P, N,
    s_y_b, s_y_l, s_y_h, s_y_p,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_b_b, s_b_l, s_b_g, s_b_n,
    s_dx_b, s_dx_l, s_dx_h, s_dx_p,
    HAS_STATES: tl.constexpr, HAS_D: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dx_s = dt_s g_s + D dy_s and the direct d dt_s = x_s . g_s, where
    g_s = sum_{t>=s} CB[t,s] exp(acs_t - acs_s) dy_t + exp(acs_last - acs_s) dS B_s.
    BLOCK_P covers the whole head dim, so d dt needs no cross-program sum.
    """
    pid = tl.program_id(0)
    hi = pid % nheads
    ci = (pid // nheads) % nchunks
    bi = (pid // nheads // nchunks).to(tl.int64)
    gi = hi // hpg
    mb = tl.program_id(1)
    chunk_len = tl.minimum(Q, seqlen - ci * Q)
    if mb * BLOCK_M >= chunk_len:
        return
    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    offs_p = tl.arange(0, BLOCK_P)
    mask_m = offs_m < chunk_len
    mask_p = offs_p < P
    a_base = ((bi * nheads + hi) * nchunks + ci) * Q
    acs_m = tl.load(acs_ptr + a_base + offs_m, mask=mask_m, other=0.0)
    dt_m = tl.load(dtp_ptr + a_base + offs_m, mask=mask_m, other=0.0)
    y_base = dy_ptr + bi * s_y_b + (ci * Q) * s_y_l + hi * s_y_h
    cb_base = cb_ptr + ((bi * nchunks + ci) * ngroups + gi) * Q * Q
    acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    k_start = (mb * BLOCK_M // BLOCK_K) * BLOCK_K
    for k0 in range(k_start, chunk_len, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < chunk_len
        causal = mask_m[:, None] & mask_k[None, :] & (kk[None, :] >= offs_m[:, None])
        cbt = tl.load(cb_base + kk[None, :] * Q + offs_m[:, None], mask=causal, other=0.0)
        acs_k = tl.load(acs_ptr + a_base + kk, mask=mask_k, other=0.0)
        decay = tl.exp(tl.where(causal, acs_k[None, :] - acs_m[:, None], float("-inf")))
        w = tl.where(causal, cbt * decay, 0.0)
        dyk = tl.load(y_base + kk[:, None] * s_y_l + offs_p[None, :] * s_y_p,
                      mask=mask_k[:, None] & mask_p[None, :], other=0.0)
        acc += tl.dot(w.to(dyk.dtype), dyk, input_precision=PREC)
    if HAS_STATES:
        b_base = B_ptr + bi * s_b_b + (ci * Q) * s_b_l + gi * s_b_g
        ds_base = ds_ptr + ((bi * nchunks + ci) * nheads + hi) * P * N
        offs_n = tl.arange(0, BLOCK_N)
        acc_s = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            nn = n0 + offs_n
            bm = tl.load(b_base + offs_m[:, None] * s_b_l + nn[None, :] * s_b_n,
                         mask=mask_m[:, None] & (nn[None, :] < N), other=0.0)
            dst = tl.load(ds_base + offs_p[None, :] * N + nn[:, None],
                          mask=mask_p[None, :] & (nn[:, None] < N), other=0.0)
            acc_s += tl.dot(bm, dst.to(bm.dtype), input_precision=PREC)
        acs_last = tl.load(acs_ptr + a_base + Q - 1)
        acc += acc_s * tl.exp(acs_last - acs_m)[:, None]
    mask_mp = mask_m[:, None] & mask_p[None, :]
    xm = tl.load(x_ptr + bi * s_x_b + (ci * Q + offs_m[:, None]) * s_x_l + hi * s_x_h + offs_p[None, :] * s_x_p,
                 mask=mask_mp, other=0.0).to(tl.float32)
    tl.store(ddt_ptr + a_base + offs_m, tl.sum(acc * xm, axis=1), mask=mask_m)
    dx = acc * dt_m[:, None]
    if HAS_D:
        dym = tl.load(y_base + offs_m[:, None] * s_y_l + offs_p[None, :] * s_y_p, mask=mask_mp, other=0.0)
        dym = dym.to(tl.float32)
        dx += dym * tl.load(D_ptr + hi).to(tl.float32)
        # per position (not per tile), so the result does not depend on the tile config
        tl.store(dD_ptr + a_base + offs_m, tl.sum(dym * xm, axis=1), mask=mask_m)
    tl.store(dx_ptr + bi * s_dx_b + (ci * Q + offs_m[:, None]) * s_dx_l + hi * s_dx_h + offs_p[None, :] * s_dx_p,
             dx.to(dx_ptr.dtype.element_ty), mask=mask_mp)


@triton.jit
def _dt_bwd_kernel(
    dacs_ptr, ddt_direct_ptr, r_ptr, off_ptr, dlast_ptr,
    dt_ptr, bias_ptr, A_ptr, dtp_ptr, ddt_ptr, dA_ptr, dbias_ptr,
    seqlen, nheads, nchunks, Q, n_slots,
    s_dt_b, s_dt_l, s_dt_h, s_g_b, s_g_l, s_g_h,
    HAS_STATES: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    """From d acs to d dt (raw, before bias/softplus), with dA and d dt_bias partials.

    d dA_k = sum_{t>=k} d acs_t (reverse cumsum); the state terms enter already summed:
    r as an exclusive prefix sum, dlast (through the state passing) at every position.
    """
    bi = tl.program_id(0).to(tl.int64)
    ci = tl.program_id(1)
    offs_h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_q = tl.arange(0, BLOCK_Q)
    pos = ci * Q + offs_q
    mask_h = offs_h < nheads
    valid = mask_h[:, None] & (offs_q[None, :] < Q) & (pos[None, :] < seqlen)
    row = (bi * nheads + offs_h) * nchunks + ci  # (BLOCK_H,)
    dacs = tl.zeros((BLOCK_H, BLOCK_Q), dtype=tl.float32)
    for j in range(0, n_slots):
        dacs += tl.load(dacs_ptr + (row[:, None] * n_slots + j) * Q + offs_q[None, :], mask=valid, other=0.0)
    q_off = row[:, None] * Q + offs_q[None, :]
    if HAS_STATES:
        dacs += tl.load(off_ptr + q_off, mask=valid, other=0.0)
    ddA = tl.cumsum(dacs, axis=1, reverse=True)
    if HAS_STATES:
        r = tl.load(r_ptr + q_off, mask=valid, other=0.0)
        ddA += tl.cumsum(r, axis=1) - r
        ddA += tl.load(dlast_ptr + row, mask=mask_h, other=0.0)[:, None]
    ddA = tl.where(valid, ddA, 0.0)
    dtp = tl.load(dtp_ptr + q_off, mask=valid, other=0.0)
    A = tl.load(A_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    out_row = (bi * nchunks + ci) * nheads + offs_h
    tl.store(dA_ptr + out_row, tl.sum(ddA * dtp, axis=1), mask=mask_h)
    ddt = tl.load(ddt_direct_ptr + q_off, mask=valid, other=0.0) + ddA * A[:, None]
    if SOFTPLUS:
        raw = tl.load(dt_ptr + bi * s_dt_b + pos[None, :] * s_dt_l + offs_h[:, None] * s_dt_h, mask=valid, other=0.0)
        raw = raw.to(tl.float32)
        if HAS_BIAS:
            raw += tl.load(bias_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)[:, None]
        ddt = ddt * tl.sigmoid(raw)
    ddt = tl.where(valid, ddt, 0.0)
    if HAS_BIAS:
        tl.store(dbias_ptr + out_row, tl.sum(ddt, axis=1), mask=mask_h)
    tl.store(ddt_ptr + bi * s_g_b + pos[None, :] * s_g_l + offs_h[:, None] * s_g_h,
             ddt.to(ddt_ptr.dtype.element_ty), mask=valid)


# ----------------------------------------------------------------------------- launch configs

_KEY = ["Q", "P", "N", "PREC"]


def _fits_chunk(args: Meta, meta: Meta, *names: str) -> bool:
    return all(meta[n] <= args["Q"] for n in names)


def _fits_dims(args: Meta, meta: Meta, **blocks: str) -> bool:
    """Each block at most its dim rounded up to a power of two (16 at least, the dot minimum)."""
    return all(meta[name] <= max(16, _p2(args[dim])) for name, dim in blocks.items())


def _dot_min() -> int:
    """Smallest block a tl.dot accepts: 16 on a GPU, anything under the interpreter."""
    return 1 if INTERPRET else 16


def _small_meta(args: Meta, **blocks: str) -> Meta:
    """Interpreter / fallback meta: each block = min(16, next_pow2(dim)) (at least the dot minimum)."""
    return {name: max(_dot_min(), _interp_block(args[dim])) for name, dim in blocks.items()}


_cb_k = Launcher(
    _cb_kernel,
    configs=[
        ({"BLOCK_M": 64, "BLOCK_S": 64, "BLOCK_N": 64}, 4, 3),
        ({"BLOCK_M": 128, "BLOCK_S": 64, "BLOCK_N": 64}, 4, 3),
        ({"BLOCK_M": 64, "BLOCK_S": 64, "BLOCK_N": 32}, 4, 2),
        ({"BLOCK_M": 32, "BLOCK_S": 32, "BLOCK_N": 32}, 4, 2),
    ],
    key=_KEY,
    valid=lambda a, m: _fits_chunk(a, m, "BLOCK_M", "BLOCK_S") and _fits_dims(a, m, BLOCK_N="N"),
    interp=lambda a: _small_meta(a, BLOCK_M="Q", BLOCK_S="Q", BLOCK_N="N"),
)

_chunk_state_k = Launcher(
    _chunk_state_kernel,
    configs=[
        ({"BLOCK_P": 64, "BLOCK_N": 64, "BLOCK_K": 64}, 4, 3),
        ({"BLOCK_P": 64, "BLOCK_N": 128, "BLOCK_K": 32}, 4, 3),
        ({"BLOCK_P": 32, "BLOCK_N": 64, "BLOCK_K": 64}, 4, 2),
        ({"BLOCK_P": 16, "BLOCK_N": 32, "BLOCK_K": 32}, 4, 2),
    ],
    key=_KEY + ["TO_END"],
    valid=lambda a, m: _fits_chunk(a, m, "BLOCK_K") and _fits_dims(a, m, BLOCK_P="P", BLOCK_N="N"),
    interp=lambda a: _small_meta(a, BLOCK_P="P", BLOCK_N="N", BLOCK_K="Q"),
)

_scan_fwd_k = Launcher(
    _chunk_scan_fwd_kernel,
    configs=[
        ({"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_P": 64, "BLOCK_N": 64}, 4, 3),
        ({"BLOCK_M": 128, "BLOCK_K": 64, "BLOCK_P": 64, "BLOCK_N": 64}, 8, 3),
        ({"BLOCK_M": 64, "BLOCK_K": 32, "BLOCK_P": 64, "BLOCK_N": 32}, 4, 4),
        ({"BLOCK_M": 32, "BLOCK_K": 32, "BLOCK_P": 32, "BLOCK_N": 32}, 4, 2),
        ({"BLOCK_M": 16, "BLOCK_K": 16, "BLOCK_P": 16, "BLOCK_N": 16}, 4, 2),
        # AiM's shapes (P 64, a chunk of 256): fewer, wider k steps or two programs per head's P
        ({"BLOCK_M": 64, "BLOCK_K": 128, "BLOCK_P": 64, "BLOCK_N": 64}, 8, 2),
        ({"BLOCK_M": 128, "BLOCK_K": 64, "BLOCK_P": 64, "BLOCK_N": 64}, 4, 2),
        ({"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_P": 32, "BLOCK_N": 64}, 4, 3),
    ],
    key=_KEY + ["HAS_STATES", "HAS_Z", "HAS_D"],
    valid=lambda a, m: _fits_chunk(a, m, "BLOCK_M", "BLOCK_K") and _fits_dims(a, m, BLOCK_P="P", BLOCK_N="N"),
    interp=lambda a: _small_meta(a, BLOCK_M="Q", BLOCK_K="Q", BLOCK_P="P", BLOCK_N="N"),
)


#: Programs per dCB tile, each summing its share of a group's heads (1: one program loops over all of
#: them: AiM-B's whole batch is 640 programs). Four made the scan alone faster but AiM-B's training step
#: 1.8% slower on an H100 (the partial sums' extra pass), so 1 (docs/benchmarks.md).
DCB_HEAD_SPLIT = 1


#: The dCB kernel loads a head's whole P at once (one tile, P <= 128), so that its loop over heads is the innermost
#: and Triton pipelines its loads; False: P in autotuned blocks inside the head loop.
DCB_ONE_P = True


#: The dCB kernel's square tile (None: 64, 16 under the interpreter); fixed per call, not autotuned, because it sets
#: the number of d acs slots. benchmarks/ssd_scan.py ``--dcb-sweep`` times it against DCB_HEAD_SPLIT.
DCB_BLOCK: int | None = None


def _dcb_block(Q: int) -> int:
    if DCB_BLOCK is not None:
        return min(Q, DCB_BLOCK)
    return min(Q, 16) if INTERPRET else min(Q, 64)


_dcb_k = Launcher(
    _dcb_kernel,
    configs=[
        ({"BLOCK_P": 64, "ONE_P": False}, 4, 3),
        ({"BLOCK_P": 64, "ONE_P": False}, 8, 2),
        ({"BLOCK_P": 32, "ONE_P": False}, 4, 3),
        ({"BLOCK_P": 16, "ONE_P": False}, 4, 2),
    ],
    key=_KEY + ["BLOCK_M"],
    valid=lambda a, m: _fits_dims(a, m, BLOCK_P="P"),
    interp=lambda a: {**_small_meta(a, BLOCK_P="P"), "ONE_P": False},
)
_dcb_one_p_k = Launcher(  # DCB_ONE_P: BLOCK_P and ONE_P come from the call
    _dcb_kernel,
    configs=[({}, 4, 3), ({}, 8, 3), ({}, 4, 2), ({}, 8, 2), ({}, 4, 4), ({}, 8, 4)],
    key=_KEY + ["BLOCK_M", "BLOCK_P"],
    valid=lambda a, m: True,
    interp=lambda a: {},
)

_dbc_k = Launcher(
    _dbc_kernel,
    configs=[
        ({"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_P": 64}, 4, 3),
        ({"BLOCK_M": 64, "BLOCK_K": 32, "BLOCK_P": 32}, 4, 3),
        ({"BLOCK_M": 32, "BLOCK_K": 64, "BLOCK_P": 64}, 4, 2),
        ({"BLOCK_M": 16, "BLOCK_K": 16, "BLOCK_P": 16}, 4, 2),
    ],
    key=_KEY + ["IS_DB", "HAS_STATES", "BLOCK_N"],
    valid=lambda a, m: _fits_chunk(a, m, "BLOCK_M", "BLOCK_K") and _fits_dims(a, m, BLOCK_P="P"),
    interp=lambda a: _small_meta(a, BLOCK_M="Q", BLOCK_K="Q", BLOCK_P="P"),
)

_dx_k = Launcher(
    _dx_kernel,
    configs=[
        ({"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_N": 64}, 4, 3),
        ({"BLOCK_M": 64, "BLOCK_K": 32, "BLOCK_N": 32}, 4, 3),
        ({"BLOCK_M": 32, "BLOCK_K": 64, "BLOCK_N": 64}, 4, 2),
        ({"BLOCK_M": 128, "BLOCK_K": 32, "BLOCK_N": 32}, 8, 2),
        ({"BLOCK_M": 16, "BLOCK_K": 16, "BLOCK_N": 16}, 4, 2),
        ({"BLOCK_M": 128, "BLOCK_K": 64, "BLOCK_N": 64}, 8, 2),
        ({"BLOCK_M": 64, "BLOCK_K": 128, "BLOCK_N": 64}, 8, 2),
    ],
    key=_KEY + ["HAS_STATES", "HAS_D", "BLOCK_P"],
    valid=lambda a, m: _fits_chunk(a, m, "BLOCK_M", "BLOCK_K") and _fits_dims(a, m, BLOCK_N="N"),
    interp=lambda a: _small_meta(a, BLOCK_M="Q", BLOCK_K="Q", BLOCK_N="N"),
)


def _elementwise_meta(rows: int, Q: int) -> Meta:
    block_q = _p2(Q)
    return {"BLOCK_H": min(_p2(rows), max(1, 4096 // block_q)), "BLOCK_Q": block_q, "num_warps": 4}


_dt_cumsum_k = Launcher(
    _dt_cumsum_kernel, configs=[], key=[], valid=lambda a, m: True,
    interp=lambda a: _elementwise_meta(a["nheads"], a["Q"]), autotune=False,
)
_dt_bwd_k = Launcher(
    _dt_bwd_kernel, configs=[], key=[], valid=lambda a, m: True,
    interp=lambda a: _elementwise_meta(a["nheads"], a["Q"]), autotune=False,
)
_STATE_BLOCK = 1024
_pass_fwd_k = Launcher(
    _state_passing_fwd_kernel, configs=[], key=[], valid=lambda a, m: True,
    interp=lambda a: {"BLOCK": min(_STATE_BLOCK, _p2(a["dim"])), "num_warps": 4}, autotune=False,
)
_pass_bwd_k = Launcher(
    _state_passing_bwd_kernel, configs=[], key=[], valid=lambda a, m: True,
    interp=lambda a: {"BLOCK": min(_STATE_BLOCK, _p2(a["dim"])), "num_warps": 4}, autotune=False,
)


# ----------------------------------------------------------------------------- host side


def _prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _dt_cumsum(dt: Tensor, A: Tensor, dt_bias: Tensor | None, dt_softplus: bool, Q: int) -> tuple[Tensor, Tensor]:
    b, seqlen, h = dt.shape
    nchunks = max(1, math.ceil(seqlen / Q))
    dtp = torch.empty(b, h, nchunks, Q, device=dt.device, dtype=torch.float32)
    acs = torch.empty_like(dtp)
    _dt_cumsum_k(
        lambda m: (b, nchunks, triton.cdiv(h, m["BLOCK_H"])),
        dt_ptr=dt, A_ptr=A, bias_ptr=dt_bias if dt_bias is not None else A, dtp_ptr=dtp, acs_ptr=acs,
        seqlen=seqlen, nheads=h, nchunks=nchunks, Q=Q,
        s_dt_b=dt.stride(0), s_dt_l=dt.stride(1), s_dt_h=dt.stride(2),
        HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
    )
    return dtp, acs


def _cb(C: Tensor, B: Tensor, Q: int, nchunks: int) -> Tensor:
    b, seqlen, g, n = B.shape
    cb = torch.empty(b, nchunks, g, Q, Q, device=B.device, dtype=torch.float32)
    _cb_k(
        lambda m: (b * nchunks * g, triton.cdiv(Q, m["BLOCK_M"]), triton.cdiv(Q, m["BLOCK_S"])),
        C_ptr=C, B_ptr=B, cb_ptr=cb, seqlen=seqlen, nchunks=nchunks, ngroups=g, Q=Q, N=n,
        s_c_b=C.stride(0), s_c_l=C.stride(1), s_c_g=C.stride(2), s_c_n=C.stride(3),
        s_b_b=B.stride(0), s_b_l=B.stride(1), s_b_g=B.stride(2), s_b_n=B.stride(3),
        PREC=_prec(B.dtype),
    )
    return cb


def _chunk_states(u: Tensor, v: Tensor, dtp: Tensor, acs: Tensor, Q: int, to_end: bool) -> Tensor:
    """(b, c, h, p, n) fp32: chunk states (u=x, v=B) or state gradients (u=dy, v=C)."""
    b, seqlen, h, p = u.shape
    g, n = v.shape[2], v.shape[3]
    nchunks = dtp.shape[2]
    out = torch.empty(b, nchunks, h, p, n, device=u.device, dtype=torch.float32)
    _chunk_state_k(
        lambda m: (b * nchunks * h, triton.cdiv(p, m["BLOCK_P"]) * triton.cdiv(n, m["BLOCK_N"])),
        u_ptr=u, v_ptr=v, dtp_ptr=dtp, acs_ptr=acs, out_ptr=out,
        seqlen=seqlen, nheads=h, nchunks=nchunks, hpg=h // g, Q=Q, P=p, N=n,
        s_u_b=u.stride(0), s_u_l=u.stride(1), s_u_h=u.stride(2), s_u_p=u.stride(3),
        s_v_b=v.stride(0), s_v_l=v.stride(1), s_v_g=v.stride(2), s_v_n=v.stride(3),
        TO_END=to_end, PREC=_prec(u.dtype),
    )
    return out


def _pass_states(chunk_states: Tensor, acs: Tensor, init: Tensor | None, Q: int) -> tuple[Tensor, Tensor]:
    """The states entering each chunk (b,c,h,p,n) and the final state (b,h,p,n), both fp32."""
    b, nchunks, h, p, n = chunk_states.shape
    entering = torch.empty_like(chunk_states)
    final = torch.empty(b, h, p, n, device=chunk_states.device, dtype=torch.float32)
    dim = p * n
    _pass_fwd_k(
        lambda m: (b * h, triton.cdiv(dim, m["BLOCK"])),
        states_ptr=chunk_states, acs_ptr=acs, init_ptr=init if init is not None else final,
        entering_ptr=entering, final_ptr=final, nheads=h, nchunks=nchunks, Q=Q, dim=dim, HAS_INIT=init is not None,
    )
    return entering, final


def _states_entering(x: Tensor, B: Tensor, dtp: Tensor, acs: Tensor, init: Tensor | None, Q: int) -> tuple[Tensor, Tensor]:
    return _pass_states(_chunk_states(x, B, dtp, acs, Q, to_end=True), acs, init, Q)


def _fwd(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, Q: int, D: Tensor | None, z: Tensor | None,
    dt_bias: Tensor | None, dt_softplus: bool, init: Tensor | None, want_final: bool,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor | None]:
    b, seqlen, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    dtp, acs = _dt_cumsum(dt, A, dt_bias, dt_softplus, Q)
    nchunks = dtp.shape[2]
    scan_states = nchunks > 1 or init is not None
    states = final = None
    if scan_states or want_final:
        states, final = _states_entering(x, B, dtp, acs, init, Q)
    cb = _cb(C, B, Q, nchunks)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    ypre = torch.empty_like(out) if z is not None else None
    zz = z if z is not None else x
    _scan_fwd_k(
        lambda m: (b * nchunks * h, triton.cdiv(Q, m["BLOCK_M"]), triton.cdiv(p, m["BLOCK_P"])),
        cb_ptr=cb, x_ptr=x, z_ptr=zz, dtp_ptr=dtp, acs_ptr=acs, C_ptr=C,
        states_ptr=states if states is not None else cb, D_ptr=D if D is not None else A,
        out_ptr=out, ypre_ptr=ypre if ypre is not None else out,
        seqlen=seqlen, nheads=h, nchunks=nchunks, ngroups=g, hpg=h // g, Q=Q, P=p, N=n,
        s_x_b=x.stride(0), s_x_l=x.stride(1), s_x_h=x.stride(2), s_x_p=x.stride(3),
        s_z_b=zz.stride(0), s_z_l=zz.stride(1), s_z_h=zz.stride(2), s_z_p=zz.stride(3),
        s_o_b=out.stride(0), s_o_l=out.stride(1), s_o_h=out.stride(2), s_o_p=out.stride(3),
        s_c_b=C.stride(0), s_c_l=C.stride(1), s_c_g=C.stride(2), s_c_n=C.stride(3),
        HAS_STATES=scan_states, HAS_D=D is not None, HAS_Z=z is not None, PREC=_prec(x.dtype),
    )
    return out, ypre, dtp, acs, final


def _bwd(
    dout: Tensor, dfinal: Tensor | None, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, Q: int,
    D: Tensor | None, z: Tensor | None, ypre: Tensor | None, dt_bias: Tensor | None, dt_softplus: bool,
    init: Tensor | None, dtp: Tensor, acs: Tensor, out: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, ...]:
    """The gradients; ``out`` = (dx, ddt, dB, dC) are buffers to write them into (views of one packed gradient,
    unit last-dim stride), else they are allocated contiguous."""
    b, seqlen, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    nchunks = dtp.shape[2]
    hpg = h // g
    dev = x.device
    prec = _prec(x.dtype)

    dz = None
    if z is not None:
        # out = ypre * silu(z): split the gradient between ypre and z (fp32, once)
        zf = z.float()
        sig = torch.sigmoid(zf)
        doutf = dout.float()
        dy = (doutf * zf * sig).to(x.dtype)
        dz = (doutf * ypre.float() * sig * (1 + zf * (1 - sig))).to(z.dtype)
    else:
        dy = dout.to(x.dtype)
    dy = last_dim_contiguous(dy)

    has_states = nchunks > 1 or init is not None or dfinal is not None
    states = dstates = dinit = dlast = None
    if has_states:
        states, _ = _states_entering(x, B, dtp, acs, init, Q)
        dstates = _chunk_states(dy, C, dtp, acs, Q, to_end=False)
        dim = p * n
        nblk = triton.cdiv(dim, min(_STATE_BLOCK, _p2(dim)))
        dlast_part = torch.empty(b, h, nchunks, nblk, device=dev, dtype=torch.float32)
        dinit = torch.empty(b, h, p, n, device=dev, dtype=torch.float32) if init is not None else None
        dout_states = torch.empty_like(dstates)
        _pass_bwd_k(
            lambda m: (b * h, triton.cdiv(dim, m["BLOCK"])),
            g_ptr=dstates, states_ptr=states, acs_ptr=acs,
            dfinal_ptr=dfinal.float().contiguous() if dfinal is not None else acs,
            dinit_ptr=dinit if dinit is not None else acs, dlast_ptr=dlast_part, dout_ptr=dout_states,
            nheads=h, nchunks=nchunks, Q=Q, dim=dim,
            HAS_DFINAL=dfinal is not None, HAS_DINIT=dinit is not None,
        )
        dlast = dlast_part.sum(-1)
        dstates = dout_states  # the gradient of each chunk's own state S_c

    cb = _cb(C, B, Q, nchunks)

    bm = _dcb_block(Q)
    n_slots = triton.cdiv(Q, bm)
    split = max(1, min(DCB_HEAD_SPLIT, hpg))
    per_part = triton.cdiv(hpg, split)
    split = triton.cdiv(hpg, per_part)  # no empty part
    dcb_parts = torch.empty(b, nchunks, g, split, Q, Q, device=dev, dtype=torch.float32)
    dacs = torch.empty(b, h, nchunks, n_slots, Q, device=dev, dtype=torch.float32)
    (_dcb_one_p_k if DCB_ONE_P else _dcb_k)(
        lambda m: (b * nchunks * g * split, n_slots, n_slots),
        x_ptr=x, dy_ptr=dy, cb_ptr=cb, dtp_ptr=dtp, acs_ptr=acs, dcb_ptr=dcb_parts, dacs_ptr=dacs,
        seqlen=seqlen, nheads=h, nchunks=nchunks, ngroups=g, hpg=hpg, Q=Q, P=p, n_slots=n_slots,
        split=split, heads_per_part=per_part,
        s_x_b=x.stride(0), s_x_l=x.stride(1), s_x_h=x.stride(2), s_x_p=x.stride(3),
        s_y_b=dy.stride(0), s_y_l=dy.stride(1), s_y_h=dy.stride(2), s_y_p=dy.stride(3),
        PREC=prec, BLOCK_M=bm, **({"ONE_P": True, "BLOCK_P": max(_dot_min(), _p2(p))} if DCB_ONE_P else {}),
    )
    dcb = dcb_parts.sum(3) if split > 1 else dcb_parts[:, :, :, 0]

    r = torch.empty(b, h, nchunks, Q, device=dev, dtype=torch.float32) if has_states else None
    off = torch.empty_like(r) if has_states else None
    if out is not None:
        dx, ddt, dB, dC = out
    else:
        dx = torch.empty_like(x, memory_format=torch.contiguous_format)
        ddt = torch.empty_like(dt, memory_format=torch.contiguous_format)
        dB = torch.empty_like(B, memory_format=torch.contiguous_format)
        dC = torch.empty_like(C, memory_format=torch.contiguous_format)
    block_n = max(16, _p2(n)) if not INTERPRET else _p2(n)
    for is_db in (True, False):
        v, out, u, st, own, acc_st = (C, dB, x, dstates, B, r) if is_db else (B, dC, dy, states, C, off)
        _dbc_k(
            lambda m: (b * nchunks * g, triton.cdiv(Q, m["BLOCK_M"])),
            dcb_ptr=dcb, v_ptr=v, out_ptr=out, u_ptr=u, st_ptr=st if st is not None else dcb, self_ptr=own,
            dtp_ptr=dtp, acs_ptr=acs, dacs_st_ptr=acc_st if acc_st is not None else dtp,
            seqlen=seqlen, nheads=h, nchunks=nchunks, ngroups=g, hpg=hpg, Q=Q, P=p, N=n,
            s_v_b=v.stride(0), s_v_l=v.stride(1), s_v_g=v.stride(2), s_v_n=v.stride(3),
            s_o_b=out.stride(0), s_o_l=out.stride(1), s_o_g=out.stride(2), s_o_n=out.stride(3),
            s_u_b=u.stride(0), s_u_l=u.stride(1), s_u_h=u.stride(2), s_u_p=u.stride(3),
            s_s_b=own.stride(0), s_s_l=own.stride(1), s_s_g=own.stride(2), s_s_n=own.stride(3),
            IS_DB=is_db, HAS_STATES=has_states, PREC=prec, BLOCK_N=block_n,
        )

    ddt_direct = torch.empty(b, h, nchunks, Q, device=dev, dtype=torch.float32)
    dD_part = torch.zeros(b, h, nchunks, Q, device=dev, dtype=torch.float32) if D is not None else None
    _dx_k(
        lambda m: (b * nchunks * h, triton.cdiv(Q, m["BLOCK_M"])),
        cb_ptr=cb, dy_ptr=dy, x_ptr=x, dtp_ptr=dtp, acs_ptr=acs, B_ptr=B,
        ds_ptr=dstates if dstates is not None else cb, D_ptr=D if D is not None else A,
        dx_ptr=dx, ddt_ptr=ddt_direct, dD_ptr=dD_part if dD_part is not None else ddt_direct,
        seqlen=seqlen, nheads=h, nchunks=nchunks, ngroups=g, hpg=hpg, Q=Q, P=p, N=n,
        s_y_b=dy.stride(0), s_y_l=dy.stride(1), s_y_h=dy.stride(2), s_y_p=dy.stride(3),
        s_x_b=x.stride(0), s_x_l=x.stride(1), s_x_h=x.stride(2), s_x_p=x.stride(3),
        s_b_b=B.stride(0), s_b_l=B.stride(1), s_b_g=B.stride(2), s_b_n=B.stride(3),
        s_dx_b=dx.stride(0), s_dx_l=dx.stride(1), s_dx_h=dx.stride(2), s_dx_p=dx.stride(3),
        HAS_STATES=has_states, HAS_D=D is not None, PREC=prec, BLOCK_P=max(_dot_min(), _p2(p)),
    )

    dA_part = torch.empty(b, nchunks, h, device=dev, dtype=torch.float32)
    dbias_part = torch.empty_like(dA_part) if dt_bias is not None else None
    _dt_bwd_k(
        lambda m: (b, nchunks, triton.cdiv(h, m["BLOCK_H"])),
        dacs_ptr=dacs, ddt_direct_ptr=ddt_direct, r_ptr=r if r is not None else dtp,
        off_ptr=off if off is not None else dtp, dlast_ptr=dlast if dlast is not None else dtp,
        dt_ptr=dt, bias_ptr=dt_bias if dt_bias is not None else A, A_ptr=A, dtp_ptr=dtp,
        ddt_ptr=ddt, dA_ptr=dA_part, dbias_ptr=dbias_part if dbias_part is not None else dA_part,
        seqlen=seqlen, nheads=h, nchunks=nchunks, Q=Q, n_slots=n_slots,
        s_dt_b=dt.stride(0), s_dt_l=dt.stride(1), s_dt_h=dt.stride(2),
        s_g_b=ddt.stride(0), s_g_l=ddt.stride(1), s_g_h=ddt.stride(2),
        HAS_STATES=has_states, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
    )
    dA = dA_part.sum((0, 1))
    dbias = dbias_part.sum((0, 1)) if dbias_part is not None else None
    dD = dD_part.sum((0, 2, 3)) if dD_part is not None else None
    return dx, ddt, dA, dB, dC, dD, dz, dbias, dinit


# ----------------------------------------------------------------------------- custom ops
# The scan is exposed as two opaque PyTorch custom ops so that torch.compile (Dynamo +
# AOTAutograd) treats each direction as one graph node with a shape-only fake
# implementation, instead of tracing into the Triton launcher / autotuner.
# Custom ops take optional tensors as ``Tensor?`` but cannot return ``None``: absent
# results come back as empty placeholders and are mapped to ``None`` here.


def _nchunks(seqlen: Any, Q: int) -> int:
    return max(1, (seqlen + Q - 1) // Q)  # as math.ceil in _dt_cumsum; SymInt-friendly


def _none(t: Tensor) -> Tensor:
    return t.new_empty(0)


# Explicit schemas (what torch infers from the annotations): older torch cannot read
# this module's postponed (string) annotations.
_FWD_SCHEMA = (
    "(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, SymInt chunk_size, Tensor? D, Tensor? z, Tensor? dt_bias, "
    "bool dt_softplus, Tensor? initial_states, bool return_final_states) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor dout, Tensor? dfinal, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, SymInt chunk_size, Tensor? D, "
    "Tensor? z, Tensor? ypre, Tensor? dt_bias, bool dt_softplus, Tensor? initial_states, Tensor dtp, Tensor acs) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("avgkit_mamba::ssd_chunk_scan_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def _scan_fwd_op(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, D: Tensor | None, z: Tensor | None,
    dt_bias: Tensor | None, dt_softplus: bool, initial_states: Tensor | None, return_final_states: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (y, final states or empty, pre-gate y or empty, processed dt, dt*A cumsum)."""
    out, ypre, dtp, acs, final = _fwd(
        x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states, return_final_states
    )
    final = final if return_final_states else None
    return out, *(t if t is not None else _none(dtp) for t in (final, ypre)), dtp, acs


@_scan_fwd_op.register_fake
def _(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states, return_final_states):
    b, seqlen, h, p = x.shape
    dtp = x.new_empty(b, h, _nchunks(seqlen, chunk_size), chunk_size, dtype=torch.float32)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    final = dtp.new_empty(b, h, p, B.shape[3]) if return_final_states else dtp.new_empty(0)
    ypre = torch.empty_like(out) if z is not None else dtp.new_empty(0)
    return out, final, ypre, dtp, torch.empty_like(dtp)


@torch.library.custom_op("avgkit_mamba::ssd_chunk_scan_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def _scan_bwd_op(
    dout: Tensor, dfinal: Tensor | None, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
    D: Tensor | None, z: Tensor | None, ypre: Tensor | None, dt_bias: Tensor | None, dt_softplus: bool,
    initial_states: Tensor | None, dtp: Tensor, acs: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (dx, ddt, dA, dB, dC, dD, dz, d dt_bias, d initial_states); empty where the input is absent."""
    grads = _bwd(dout, dfinal, x, dt, A, B, C, chunk_size, D, z, ypre, dt_bias, dt_softplus, initial_states, dtp, acs)
    # contiguous: the fake below promises contiguous results (dz's layout follows dout's otherwise)
    return tuple(g.contiguous() if g is not None else _none(dtp) for g in grads)


@_scan_bwd_op.register_fake
def _(dout, dfinal, x, dt, A, B, C, chunk_size, D, z, ypre, dt_bias, dt_softplus, initial_states, dtp, acs):
    def like(t: Tensor | None, dtype: torch.dtype | None = None) -> Tensor:
        return dtp.new_empty(0) if t is None else torch.empty_like(t, dtype=dtype, memory_format=torch.contiguous_format)

    def vec(t: Tensor | None) -> Tensor:  # per-head fp32 sums
        return dtp.new_empty(0) if t is None else dtp.new_empty(A.shape[0])

    return like(x), like(dt), vec(A), like(B), like(C), vec(D), like(z), vec(dt_bias), like(initial_states, torch.float32)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, init, want_final = inputs
    _, _, ypre, dtp, acs = output
    ctx.mark_non_differentiable(ypre, dtp, acs)  # internals kept for the backward only
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, dt, A, B, C, D, z, ypre if z is not None else None, dt_bias, init, dtp, acs)
    ctx.chunk_size, ctx.dt_softplus, ctx.want_final = chunk_size, dt_softplus, want_final


def _backward(ctx: Any, dout: Tensor | None, dfinal: Tensor | None, *_internals: Any) -> tuple:
    x, dt, A, B, C, D, z, ypre, dt_bias, init, dtp, acs = ctx.saved_tensors
    dout = torch.zeros_like(x) if dout is None else last_dim_contiguous(dout)
    if not ctx.want_final:
        dfinal = None  # the empty placeholder's gradient (materialized under AOTAutograd)
    grads = _scan_bwd_op(dout, dfinal, x, dt, A, B, C, ctx.chunk_size, D, z, ypre, dt_bias, ctx.dt_softplus,
                         init, dtp, acs)
    dx, ddt, dA, dB, dC, dD, dz, dbias, dinit = (
        g if t is not None else None for g, t in zip(grads, (x, dt, A, B, C, D, z, dt_bias, init), strict=True)
    )
    return dx, ddt, dA, dB, dC, None, dD, dz, dbias, None, dinit, None


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def chunk_scan_triton(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 256,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    initial_states: Tensor | None = None,
    return_final_states: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Triton chunked SSD scan; see :func:`avgkit_mamba.ops.ssd_torch.ssd_chunk_scan`.

    ``chunk_size`` must be a power of two (at least 16 on a GPU). Final states are fp32.
    Gradients flow to x, dt, A, B, C, D, z, dt_bias and initial_states.
    """
    if chunk_size < _dot_min() or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size {chunk_size} must be a power of two >= {_dot_min()} for the Triton scan")
    check_scan_shapes(x, dt, A, B, C)
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"the Triton scan takes fp32/fp16/bf16 inputs, not {x.dtype}; use impl='torch'")
    x = last_dim_contiguous(x)
    B = last_dim_contiguous(B.to(x.dtype))
    C = last_dim_contiguous(C.to(x.dtype))
    z = last_dim_contiguous(z)
    A = A.float().contiguous() if A.dtype != torch.float32 else A.contiguous()
    D = D.contiguous() if D is not None else None
    dt_bias = dt_bias.contiguous() if dt_bias is not None else None
    if initial_states is not None:
        initial_states = initial_states.contiguous()
    out, final, *_ = _scan_fwd_op(
        x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states, return_final_states
    )
    return (out, final) if return_final_states else out
