"""Triton kernel for a Mamba-2 decode step in the dual (quadratic) form, from per-token caches.

One program per (batch row, head): it convolves its head's x channels (shifting their
window) and the group's B and C from their old windows, appends token ``t`` to its
caches (x, dt, cumulative dt*A; B by the group's first head), then sums
``(C_t . B_s) exp(cum_t - cum_s) dt_s x_s`` over the cached tokens ``s < t`` in blocks,
adds token ``t``'s own term, the D skip, and gates with ``silu(z)``. Every program reads
only rows ``s < t`` that no program of this launch writes. The grouped RMSNorm and the
shift of the shared B/C windows follow in :mod:`triton_step`'s epilogue.
Reference: :func:`avgkit_mamba.ops.ssd_torch.ssd_dual_step`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from avgkit_mamba.ops.ssd_torch import split_zxbcdt
from avgkit_mamba.ops.triton_common import _conv_inputs, _dt_log_decay
from avgkit_mamba.ops.triton_launch import INTERPRET, last_dim_contiguous
from avgkit_mamba.ops.triton_step import _launch_epilogue

__all__ = ["dual_step_triton"]


@triton.jit
def _dual_step_kernel(
    xbc_ptr, dt_ptr, z_ptr, conv_ptr, cw_ptr, cb_ptr,
    cx_ptr, cbm_ptr, cdt_ptr, ccum_ptr, len_ptr,
    A_ptr, D_ptr, bias_ptr, y_ptr,
    hpg, P, N, W, d_inner, ngroups,
    s_xbc_b, s_dt_b, s_z_b, s_cs_b, s_cs_c, s_cs_w,
    s_cx_b, s_cx_l, s_cx_h, s_cb_b, s_cb_l, s_cb_g, s_cd_b, s_cd_l, s_y_b,
    HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_S: tl.constexpr,
):
    bi = tl.program_id(0).to(tl.int64)
    hi = tl.program_id(1)
    gi = hi // hpg
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < P
    mask_n = offs_n < N
    t = tl.load(len_ptr)

    x, Bv, Cv = _conv_inputs(conv_ptr + bi * s_cs_b, xbc_ptr + bi * s_xbc_b, cw_ptr, cb_ptr, s_cs_c, s_cs_w, hi, gi,
                             ngroups, P, N, W, d_inner, offs_p, mask_p, offs_n, mask_n, HAS_CONV_BIAS, BLOCK_W)

    dt, log_decay = _dt_log_decay(tl.load(dt_ptr + bi * s_dt_b + hi), bias_ptr, A_ptr, hi, True, HAS_DT_BIAS)
    cum_t = tl.load(ccum_ptr + bi * s_cd_b + (t - 1) * s_cd_l + hi) + log_decay

    # append token t: x, dt, cum are this head's; B is the group's (its first head writes it)
    tl.store(cx_ptr + bi * s_cx_b + t * s_cx_l + hi * s_cx_h + offs_p, x.to(cx_ptr.dtype.element_ty), mask=mask_p)
    tl.store(cdt_ptr + bi * s_cd_b + t * s_cd_l + hi, dt)
    tl.store(ccum_ptr + bi * s_cd_b + t * s_cd_l + hi, cum_t)
    if hi % hpg == 0:
        tl.store(cbm_ptr + bi * s_cb_b + t * s_cb_l + gi * s_cb_g + offs_n, Bv.to(cbm_ptr.dtype.element_ty),
                 mask=mask_n)

    # token t itself, then the cached tokens s < t
    acc = tl.sum(Cv * Bv, axis=0) * dt * x
    offs_s = tl.arange(0, BLOCK_S)
    for s0 in range(0, t, BLOCK_S):
        s = s0 + offs_s
        mask_s = s < t
        bs = tl.load(cbm_ptr + bi * s_cb_b + s[:, None] * s_cb_l + gi * s_cb_g + offs_n[None, :],
                     mask=mask_s[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
        score = tl.sum(bs * Cv[None, :], axis=1)
        cum_s = tl.load(ccum_ptr + bi * s_cd_b + s * s_cd_l + hi, mask=mask_s, other=0.0)
        dt_s = tl.load(cdt_ptr + bi * s_cd_b + s * s_cd_l + hi, mask=mask_s, other=0.0)
        w = tl.where(mask_s, score * tl.exp(tl.minimum(cum_t - cum_s, 0.0)) * dt_s, 0.0)
        xs = tl.load(cx_ptr + bi * s_cx_b + s[:, None] * s_cx_l + hi * s_cx_h + offs_p[None, :],
                     mask=mask_s[:, None] & mask_p[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w[:, None] * xs, axis=0)
    if HAS_D:
        acc += tl.load(D_ptr + hi).to(tl.float32) * x
    zz = tl.load(z_ptr + bi * s_z_b + hi * P + offs_p, mask=mask_p, other=0.0).to(tl.float32)
    acc = acc * zz * tl.sigmoid(zz)
    tl.store(y_ptr + bi * s_y_b + hi * P + offs_p, acc, mask=mask_p)


def dual_step_triton(
    zxbcdt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
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
    """A mixer's dual-form step between ``in_proj`` and ``out_proj`` (see the module docstring).

    ``zxbcdt`` is the ``in_proj`` output (read in place); caches as
    :class:`avgkit_mamba.mixer.Mamba2DualState`; ``length`` (1,) int64 = token ``t``'s row.
    Returns ``rmsnorm(y * silu(z)) * norm_weight`` (b, d_inner) in ``zxbcdt.dtype``.
    """
    zxbcdt = last_dim_contiguous(zxbcdt)
    if cache_dt.stride() != cache_cum.stride():
        raise ValueError("cache_dt and cache_cum must share a layout (allocate them alike)")
    b = zxbcdt.shape[0]
    _, _, nheads, p = cache_x.shape
    n = cache_b.shape[-1]
    d_inner = nheads * p
    z, xBC, dt = split_zxbcdt(zxbcdt, nheads, p, ngroups, n)
    w = conv_state.shape[-1]
    conv_weight = conv_weight.contiguous()
    y = torch.empty(b, d_inner, device=zxbcdt.device, dtype=torch.float32)
    _dual_step_kernel[(b, nheads)](
        xBC, dt, z, conv_state, conv_weight, conv_bias if conv_bias is not None else conv_weight,
        cache_x, cache_b, cache_dt, cache_cum, length,
        A_log, D if D is not None else A_log, dt_bias if dt_bias is not None else A_log, y,
        nheads // ngroups, p, n, w, d_inner, ngroups,
        xBC.stride(0), dt.stride(0), z.stride(0),
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        cache_x.stride(0), cache_x.stride(1), cache_x.stride(2),
        cache_b.stride(0), cache_b.stride(1), cache_b.stride(2),
        cache_dt.stride(0), cache_dt.stride(1), y.stride(0),
        HAS_CONV_BIAS=conv_bias is not None, HAS_D=D is not None, HAS_DT_BIAS=dt_bias is not None,
        BLOCK_P=triton.next_power_of_2(p), BLOCK_N=triton.next_power_of_2(n), BLOCK_W=triton.next_power_of_2(w),
        BLOCK_S=8 if INTERPRET else 32, num_warps=4,
    )
    out = torch.empty(b, d_inner, device=zxbcdt.device, dtype=zxbcdt.dtype)
    _launch_epilogue(y, norm_weight, norm_eps, out, xBC, conv_state, ngroups, n)
    return out
