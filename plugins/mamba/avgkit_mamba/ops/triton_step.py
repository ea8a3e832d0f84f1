"""One fused Triton kernel for a Mamba-2 layer's decode step (one token).

Per (batch row, head, block of head dims) the kernel shifts the conv window of its x
channels and of its group's B and C channels, applies the depthwise conv + bias +
SiLU, discretises dt (bias + softplus), updates the SSM state in place, reads it out
with C, adds the D skip and gates with ``silu(z)``: one pass over the state.

The B and C channels of a group are shared by all of its heads: every program reads
their old window, and the last program of the group to finish (counted with an atomic
counter that it resets) writes the shifted window, so no program reads a window that
another has already shifted. Reference: ``dispatch.fused_step_torch``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from avgkit_mamba.ops.ssd_torch import check_step_shapes
from avgkit_mamba.ops.triton_launch import INTERPRET

__all__ = ["fused_step_triton"]


@triton.jit
def _conv_window(state_ptr, s_c, s_w, chan, chan_mask, new_ptr, W, BLOCK_W: tl.constexpr):
    """Shifted window [old[1:], new] (rows = channels) in the state's dtype."""
    offs_w = tl.arange(0, BLOCK_W)
    shifted = tl.load(state_ptr + chan[:, None] * s_c + (offs_w[None, :] + 1) * s_w,
                      mask=chan_mask[:, None] & (offs_w[None, :] + 1 < W), other=0.0)
    new = tl.load(new_ptr + chan, mask=chan_mask, other=0.0).to(shifted.dtype)
    return tl.where(offs_w[None, :] == W - 1, new[:, None], shifted)


@triton.jit
def _conv_out(window, w_ptr, bias_ptr, chan, chan_mask, W, HAS_BIAS: tl.constexpr, BLOCK_W: tl.constexpr):
    """SiLU(bias + sum_k window[:, k] * weight[:, k]) in fp32."""
    offs_w = tl.arange(0, BLOCK_W)
    wgt = tl.load(w_ptr + chan[:, None] * W + offs_w[None, :],
                  mask=chan_mask[:, None] & (offs_w[None, :] < W), other=0.0).to(tl.float32)
    acc = tl.sum(window.to(tl.float32) * wgt, axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + chan, mask=chan_mask, other=0.0).to(tl.float32)
    return acc * tl.sigmoid(acc)


@triton.jit
def _softplus(v):
    e = tl.exp(tl.minimum(v, 20.0))
    u = 1.0 + e
    lp = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
    return tl.where(v > 20.0, v, lp)


@triton.jit
def _fused_step_kernel(
    xbc_ptr, dt_ptr, z_ptr, conv_ptr, cw_ptr, cb_ptr, ssm_ptr, A_ptr, D_ptr, bias_ptr, y_ptr, count_ptr,
    nheads, ngroups, hpg, P, N, W, d_inner,
    s_xbc_b, s_dt_b, s_dt_h, s_z_b,
    s_cs_b, s_cs_c, s_cs_w,
    s_ss_b, s_ss_h, s_ss_p, s_ss_n,
    s_y_b,
    HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
):
    bi = tl.program_id(0).to(tl.int64)
    hi = tl.program_id(1)
    pb = tl.program_id(2)
    gi = hi // hpg
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    offs_w = tl.arange(0, BLOCK_W)
    mask_p = offs_p < P
    mask_n = offs_n < N
    conv_row = conv_ptr + bi * s_cs_b
    xbc_row = xbc_ptr + bi * s_xbc_b

    # conv of this program's x channels (owned: written back right away)
    chan_x = hi * P + offs_p
    win_x = _conv_window(conv_row, s_cs_c, s_cs_w, chan_x, mask_p, xbc_row, W, BLOCK_W)
    x = _conv_out(win_x, cw_ptr, cb_ptr, chan_x, mask_p, W, HAS_CONV_BIAS, BLOCK_W)
    tl.store(conv_row + chan_x[:, None] * s_cs_c + offs_w[None, :] * s_cs_w, win_x,
             mask=mask_p[:, None] & (offs_w[None, :] < W))

    # conv of the group's B and C channels (shared with the other heads of the group)
    chan_b = d_inner + gi * N + offs_n
    chan_c = d_inner + (ngroups + gi) * N + offs_n
    win_b = _conv_window(conv_row, s_cs_c, s_cs_w, chan_b, mask_n, xbc_row, W, BLOCK_W)
    win_c = _conv_window(conv_row, s_cs_c, s_cs_w, chan_c, mask_n, xbc_row, W, BLOCK_W)
    Bv = _conv_out(win_b, cw_ptr, cb_ptr, chan_b, mask_n, W, HAS_CONV_BIAS, BLOCK_W)
    Cv = _conv_out(win_c, cw_ptr, cb_ptr, chan_c, mask_n, W, HAS_CONV_BIAS, BLOCK_W)
    # every program of the group has read the old B/C windows once it has counted itself
    total = hpg * tl.num_programs(2)
    done = tl.atomic_add(count_ptr + bi * ngroups + gi, 1, sem="acq_rel")
    if done == total - 1:
        wmask = mask_n[:, None] & (offs_w[None, :] < W)
        tl.store(conv_row + chan_b[:, None] * s_cs_c + offs_w[None, :] * s_cs_w, win_b, mask=wmask)
        tl.store(conv_row + chan_c[:, None] * s_cs_c + offs_w[None, :] * s_cs_w, win_c, mask=wmask)
        tl.atomic_xchg(count_ptr + bi * ngroups + gi, 0)

    # SSM update of this head's (P block, N) state tile
    dt = tl.load(dt_ptr + bi * s_dt_b + hi * s_dt_h).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(bias_ptr + hi).to(tl.float32)
    dt = _softplus(dt)
    decay = tl.exp(dt * tl.load(A_ptr + hi).to(tl.float32))
    s_ptrs = ssm_ptr + bi * s_ss_b + hi * s_ss_h + offs_p[:, None] * s_ss_p + offs_n[None, :] * s_ss_n
    smask = mask_p[:, None] & mask_n[None, :]
    state = tl.load(s_ptrs, mask=smask, other=0.0).to(tl.float32)
    state = state * decay + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, state.to(ssm_ptr.dtype.element_ty), mask=smask)
    y = tl.sum(state * Cv[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + hi).to(tl.float32) * x
    if HAS_Z:
        zz = tl.load(z_ptr + bi * s_z_b + hi * P + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(y_ptr + bi * s_y_b + hi * P + offs_p, y.to(y_ptr.dtype.element_ty), mask=mask_p)


_COUNTERS: dict[torch.device, Tensor] = {}


def _counter(device: torch.device, size: int) -> Tensor:
    """Zeroed int32 counters, one per (batch row, group), reused across calls.

    The kernel leaves them at zero. Allocated on the first call for a size: run one
    step before capturing a CUDA graph (the warm-up compiles the kernel anyway).
    """
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < size:
        buf = torch.zeros(max(size, 256), dtype=torch.int32, device=device)
        _COUNTERS[device] = buf
    return buf


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
) -> Tensor:
    """Triton decode step; arguments as :func:`avgkit_mamba.ops.dispatch.fused_step`."""
    check_step_shapes(xBC, conv_state, conv_weight, ssm_state, headdim, ngroups)
    b = xBC.shape[0]
    _, nheads, p, n = ssm_state.shape
    w = conv_state.shape[-1]
    if xBC.stride(-1) != 1:
        xBC = xBC.contiguous()
    if z is not None and z.stride(-1) != 1:
        z = z.contiguous()
    conv_weight = conv_weight.contiguous()
    y = torch.empty(b, nheads * p, device=xBC.device, dtype=xBC.dtype)
    block_p = min(triton.next_power_of_2(p), 16 if INTERPRET else 64)
    grid = (b, nheads, triton.cdiv(p, block_p))
    count = _counter(xBC.device, b * ngroups)
    _fused_step_kernel[grid](
        xBC, dt, z if z is not None else xBC, conv_state, conv_weight,
        conv_bias if conv_bias is not None else conv_weight, ssm_state, A,
        D if D is not None else A, dt_bias if dt_bias is not None else A, y, count,
        nheads, ngroups, nheads // ngroups, p, n, w, nheads * p,
        xBC.stride(0), dt.stride(0), dt.stride(1), z.stride(0) if z is not None else 0,
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        ssm_state.stride(0), ssm_state.stride(1), ssm_state.stride(2), ssm_state.stride(3),
        y.stride(0),
        HAS_CONV_BIAS=conv_bias is not None, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_DT_BIAS=dt_bias is not None,
        BLOCK_P=block_p, BLOCK_N=triton.next_power_of_2(n), BLOCK_W=triton.next_power_of_2(w),
        num_warps=4,
    )
    return y
