"""Triton kernel for a decode step's ``out_proj`` with the next block boundary in its epilogue.

Between two mixers a decoding step ran ``out_proj`` (cuBLAS) and then the boundary's own launch
(``triton_norm``: the mixer's deferred norm, the gate, the residual add, RMSNorm, the modulation).
Here ``out_proj``'s programs do the boundary's elementwise part for their own columns, once each:

* in the K loop each program also sums the squares the state update wrote beside the outputs (the
  mixer's deferred norm, ``norm_torch.DeferredNorm``), their loads pipelined with the weights';
* after it: the product times that norm's factor, times the block's gate, plus the residual, is
  the new residual (stored); its squares are summed over the program's columns (one partial sum
  a program and row); times the next block's norm weight and ``1 + scale`` it is stored in the
  model's dtype as that block's input before its norm's factor (``norm_torch.FoldedInput``).

The next block's ``in_proj`` (``triton_in_proj``, ``folded``) sums the partial sums, scales its
input rows by ``rsqrt(mean + eps)`` and adds the shift as it loads them: the boundary's launch is
gone, and a layer is three launches (``in_proj`` with the conv, the state update, this).
Reference: ``norm_torch.fold_boundary``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from avgkit_mamba.ops.norm_torch import DeferredNorm, FoldedInput, NextBoundary
from avgkit_mamba.ops.triton_in_proj import ProjTile, proj_tile
from avgkit_mamba.ops.triton_launch import last_dim_contiguous

__all__ = ["out_proj_boundary_triton"]


@triton.jit
def _out_proj_boundary_kernel(
    y_ptr, sq_ptr, w_ptr, gate_ptr, res_ptr, nw_ptr, scale_ptr, res_out_ptr, a_ptr, ss_ptr,
    M, N, K, s_y, s_sq, s_wn, s_g, s_r, s_sc, s_ro, s_a, s_ss, y_eps,
    HAS_GATE: tl.constexpr, HAS_RES: tl.constexpr, HAS_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
):
    """One (column block, row block); addresses affine in ``tl.arange`` (see ``triton_in_proj``)."""
    pid_n = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # the mixer's deferred norm: its squares (one per input channel) summed in the K loop, pipelined with the
    # weights (a loop of their own before it ran its loads one after another: 11.7 us a layer at 32 rows on an H100)
    sumsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        offs_k = k + tl.arange(0, BLOCK_K)
        mask_k = mask_m[:, None] & (offs_k[None, :] < K)
        ya = tl.load(y_ptr + offs_m[:, None] * s_y + offs_k[None, :], mask=mask_k, other=0.0)
        sq = tl.load(sq_ptr + offs_m[:, None] * s_sq + offs_k[None, :], mask=mask_k, other=0.0)
        b = tl.load(w_ptr + offs_n[:, None] * s_wn + offs_k[None, :], mask=mask_n[:, None] & (offs_k[None, :] < K),
                    other=0.0)
        acc = tl.dot(ya, tl.trans(b), acc)
        sumsq += tl.sum(sq.to(tl.float32), axis=1)
    mask = mask_m[:, None] & mask_n[None, :]
    h = acc * tl.rsqrt(sumsq / K + y_eps)[:, None]
    if HAS_GATE:
        h *= tl.load(gate_ptr + offs_m[:, None] * s_g + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        h += tl.load(res_ptr + offs_m[:, None] * s_r + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    h = h.to(res_out_ptr.dtype.element_ty)  # the residual as stored, and as the next norm reads it
    tl.store(res_out_ptr + offs_m[:, None] * s_ro + offs_n[None, :], h, mask=mask)
    h = h.to(tl.float32)
    tl.store(ss_ptr + offs_m * s_ss + pid_n, tl.sum(h * h, axis=1), mask=mask_m)  # masked columns are zero
    a = h * tl.load(nw_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HAS_SCALE:
        a *= 1.0 + tl.load(scale_ptr + offs_m[:, None] * s_sc + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(a_ptr + offs_m[:, None] * s_a + offs_n[None, :], a.to(a_ptr.dtype.element_ty), mask=mask)


def out_proj_boundary_triton(y: Tensor, y_norm: DeferredNorm, weight: Tensor, then: NextBoundary,
                             residual: Tensor | None, tile: ProjTile | None = None) -> FoldedInput:
    """``out_proj`` (``weight`` (d_model, d_inner)) of the mixer's unnormed output ``y`` (b, d_inner), its deferred
    norm ``y_norm`` (one square a channel), and the boundary into the next block ``then``, in one launch: returns
    that block's :class:`~avgkit_mamba.ops.norm_torch.FoldedInput`."""
    b, k = y.shape
    n = weight.shape[0]
    if weight.shape[1] != k or y_norm.sumsq.shape != (b, k) or y_norm.size != k:
        raise ValueError(f"out_proj weight {tuple(weight.shape)}, output {tuple(y.shape)} and the deferred norm's "
                         f"squares {tuple(y_norm.sumsq.shape)} (size {y_norm.size}) do not fit")
    gate, residual, shift, scale = (last_dim_contiguous(t) for t in (then.gate, residual, then.shift, then.scale))
    y, sq, weight = last_dim_contiguous(y), last_dim_contiguous(y_norm.sumsq), weight.contiguous()
    tile = tile or proj_tile(b)
    bm = tile.block_m or max(16, triton.next_power_of_2(b))
    blocks = triton.cdiv(n, tile.block_n)
    res_out = torch.empty(b, n, device=y.device, dtype=then.residual_dtype or y.dtype)
    a = torch.empty(b, n, device=y.device, dtype=y.dtype)
    sumsq = torch.empty(b, blocks, device=y.device, dtype=torch.float32)
    _out_proj_boundary_kernel[(blocks, triton.cdiv(b, bm))](
        y, sq, weight, gate if gate is not None else y, residual if residual is not None else y, then.weight,
        scale if scale is not None else y, res_out, a, sumsq,
        b, n, k, y.stride(0), sq.stride(0), weight.stride(0), gate.stride(0) if gate is not None else 0,
        residual.stride(0) if residual is not None else 0, scale.stride(0) if scale is not None else 0,
        res_out.stride(0), a.stride(0), sumsq.stride(0), y_norm.eps,
        HAS_GATE=gate is not None, HAS_RES=residual is not None, HAS_SCALE=scale is not None,
        BLOCK_M=bm, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k, STAGES=tile.stages, num_warps=tile.num_warps,
    )
    return FoldedInput(a, sumsq, shift, res_out, then.eps)
