"""Triton kernels for the mixer's gated RMSNorm over whole sequences, forward and backward.

``out = rmsnorm(y * silu(z)) * weight`` over groups of channels (``GatedRMSNorm``,
reference :func:`avgkit_mamba.ops.norm_torch.gated_rms_norm`), for training and teacher
forcing, where :mod:`triton_mixer_core` runs it inside the mixer's one autograd op.

Why kernels: under ``torch.compile`` the norm's backward, the gate's gradient and the
copy of that gradient into ``in_proj``'s output gradient were separate passes. Here the
backward writes ``dz`` straight into a column slice of the caller's buffer (``in_proj``'s
output gradient) and ``dy`` where the scan's backward reads it.

Layout: ``y`` (rows, d) with unit channel stride; ``z`` and ``dz`` may be column slices of
a wider row (any row stride, passed as ``triton_launch.row_align`` describes). Math in
fp32, each result rounded once. The weight gradient is summed per block of ``ROWS`` rows
into fixed slots, then over the slots on the host: the same order on every run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from avgkit_mamba.ops.triton_launch import INTERPRET, row_align

__all__ = ["gated_norm_bwd", "gated_norm_fwd"]

#: Rows a backward program covers (fixed: it sets the number of weight-gradient slots).
ROWS = 16
#: Rows the backward loads and reduces at once (a divisor of ROWS). One: two or four were 6-20% slower on an
#: H100 at AiM-B's and AiM-L's widths (benchmarks/gated_norm.py).
ROW_TILE = 1
#: The backward's warps (None: 4, or 8 for groups over 1024 channels).
BWD_WARPS: int | None = None


@triton.jit
def _gated_norm_fwd_kernel(
    y_ptr, z_ptr, w_ptr, out_ptr, rstd_ptr, d, group, ngroups, eps, s_y, s_z,
    Z_ALIGN: tl.constexpr, BLOCK_G: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    gi = tl.program_id(1)
    s_z = s_z * Z_ALIGN
    offs = tl.arange(0, BLOCK_G)
    mask = offs < group
    cols = gi * group + offs
    y = tl.load(y_ptr + row * s_y + cols, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * s_z + cols, mask=mask, other=0.0).to(tl.float32)
    g = y * z * tl.sigmoid(z)
    rstd = tl.rsqrt(tl.sum(g * g, axis=0) / group + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * d + cols, (g * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + row * ngroups + gi, rstd)


@triton.jit
def _gated_norm_bwd_kernel(
    dout_ptr, y_ptr, z_ptr, w_ptr, rstd_ptr, dy_ptr, dz_ptr, dw_ptr, rows, d, group, ngroups,
    s_z, s_dz, Z_ALIGN: tl.constexpr, DZ_ALIGN: tl.constexpr, ROWS_PER: tl.constexpr, ROW_TILE: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """For each row: n = g * rstd with g = y silu(z); dn = dout w; dg = rstd (dn - n mean(dn n));
    dy = dg silu(z), dz = dg y silu'(z); dw += dout n (per slot). ROW_TILE rows at a time."""
    rb = tl.program_id(0)
    gi = tl.program_id(1)
    s_z, s_dz = s_z * Z_ALIGN, s_dz * DZ_ALIGN
    offs = tl.arange(0, BLOCK_G)
    mask = offs < group
    cols = gi * group + offs
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    acc_w = tl.zeros((BLOCK_G,), dtype=tl.float32)
    first = rb.to(tl.int64) * ROWS_PER
    rr = tl.arange(0, ROW_TILE)
    for i in range(0, ROWS_PER, ROW_TILE):
        row = first + i + rr
        in_rows = row < rows
        m = in_rows[:, None] & mask[None, :]
        y = tl.load(y_ptr + row[:, None] * d + cols[None, :], mask=m, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + row[:, None] * s_z + cols[None, :], mask=m, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + row[:, None] * d + cols[None, :], mask=m, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row * ngroups + gi, mask=in_rows, other=0.0)[:, None]
        sig = tl.sigmoid(z)
        gate = z * sig
        n = y * gate * rstd
        dn = dout * w[None, :]
        dg = rstd * (dn - n * (tl.sum(dn * n, axis=1) / group)[:, None])
        tl.store(dy_ptr + row[:, None] * d + cols[None, :], (dg * gate).to(dy_ptr.dtype.element_ty), mask=m)
        tl.store(dz_ptr + row[:, None] * s_dz + cols[None, :],
                 (dg * y * sig * (1.0 + z * (1.0 - sig))).to(dz_ptr.dtype.element_ty), mask=m)
        acc_w += tl.sum(dout * n, axis=0)
    tl.store(dw_ptr + rb * d + cols, acc_w, mask=mask)


def _block(group: int) -> tuple[int, int]:
    block = triton.next_power_of_2(group)
    return block, 4 if block <= 1024 else 8


def gated_norm_fwd(y: Tensor, z: Tensor, weight: Tensor, eps: float, group: int) -> tuple[Tensor, Tensor]:
    """``y`` (rows, d) contiguous, ``z`` (rows, d) with unit channel stride -> (out (rows, d) in ``y.dtype``,
    rstd (rows, d // group) fp32)."""
    rows, d = y.shape
    ngroups = d // group
    out = torch.empty_like(y)
    rstd = torch.empty(rows, ngroups, device=y.device, dtype=torch.float32)
    if rows == 0:
        return out, rstd
    block, warps = _block(group)
    za = row_align(z.stride(0))
    _gated_norm_fwd_kernel[(rows, ngroups)](
        y, z, weight, out, rstd, d, group, ngroups, eps, y.stride(0), z.stride(0) // za,
        Z_ALIGN=za, BLOCK_G=block, num_warps=warps,
    )
    return out, rstd


def gated_norm_bwd(dout: Tensor, y: Tensor, z: Tensor, weight: Tensor, rstd: Tensor, group: int, dy: Tensor,
                   dz: Tensor) -> Tensor:
    """Writes ``dy`` (rows, d contiguous, the scan's output gradient) and ``dz`` (rows, d, unit channel stride:
    a slice of ``in_proj``'s output gradient); returns the weight's gradient (d,) in fp32."""
    rows, d = y.shape
    ngroups = d // group
    tile = min(ROW_TILE, 2) if INTERPRET else ROW_TILE
    rows_per = max(min(ROWS, 4) if INTERPRET else ROWS, tile)
    if rows_per % tile:
        raise ValueError(f"triton_gated_norm.ROW_TILE={ROW_TILE} must divide ROWS={ROWS}")
    n_slots = max(1, triton.cdiv(rows, rows_per))
    dw_slots = torch.zeros(n_slots, d, device=y.device, dtype=torch.float32)
    if rows:
        block, warps = _block(group)
        za, dza = row_align(z.stride(0)), row_align(dz.stride(0))
        _gated_norm_bwd_kernel[(n_slots, ngroups)](
            dout, y, z, weight, rstd, dy, dz, dw_slots, rows, d, group, ngroups,
            z.stride(0) // za, dz.stride(0) // dza, Z_ALIGN=za, DZ_ALIGN=dza, ROWS_PER=rows_per, ROW_TILE=tile,
            BLOCK_G=block, num_warps=BWD_WARPS or warps,
        )
    return dw_slots.sum(0)
