"""Triton kernel for the block boundary of a decode step: gate, residual add, RMSNorm, modulate.

Between two mixers a step does ``residual += gate * y``, ``x = rmsnorm(residual) * w``
and ``x = x * (1 + scale) + shift``: six elementwise passes and a reduction in PyTorch,
one launch here (one program per row, everything in fp32, rounded once on store). With
the mixer's norm deferred (``norm_torch.DeferredNorm``), ``y`` is first scaled by that
norm's per-row factor, summed here from the squares the state update wrote. At the backbone's
last boundary a second RMSNorm follows the first (``norm_f``, then the final layer's norm and
modulation): the same launch, where PyTorch took about ten.
Reference: ``Block._pre`` in :mod:`avgkit_mamba.backbone`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from avgkit_mamba.ops.norm_torch import DeferredNorm
from avgkit_mamba.ops.triton_launch import gdc_wait, last_dim_contiguous, pdl_options, use_pdl

__all__ = ["add_norm_modulate_triton"]


@triton.jit
def _add_norm_modulate_kernel(
    y_ptr, gate_ptr, res_ptr, w_ptr, shift_ptr, scale_ptr, x_ptr, res_out_ptr, sq_ptr, w2_ptr,
    D, eps, s_y, s_g, s_r, s_sh, s_sc, s_x, s_ro, s_sq, parts, y_size, y_eps, eps2,
    HAS_GATE: tl.constexpr, HAS_RES: tl.constexpr, HAS_MOD: tl.constexpr, Y_NORM: tl.constexpr,
    SECOND_NORM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr, USE_PDL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D
    if USE_PDL:  # launched before out_proj finished: wait for it (and so for everything before it)
        gdc_wait()
    h = tl.load(y_ptr + row * s_y + offs, mask=mask, other=0.0).to(tl.float32)
    if Y_NORM:  # the mixer's deferred norm: rsqrt(mean(g^2) + eps) from the squares the state update wrote
        offs_q = tl.arange(0, BLOCK_Q)
        sq = tl.load(sq_ptr + row * s_sq + offs_q, mask=offs_q < parts, other=0.0).to(tl.float32)
        h *= tl.rsqrt(tl.sum(sq, axis=0) / y_size + y_eps)
    if HAS_GATE:
        h *= tl.load(gate_ptr + row * s_g + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        h += tl.load(res_ptr + row * s_r + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(res_out_ptr + row * s_ro + offs, h.to(res_out_ptr.dtype.element_ty), mask=mask)
    rstd = tl.rsqrt(tl.sum(h * h, axis=0) / D + eps)
    x = h * rstd * tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if SECOND_NORM:  # masked lanes are zero, so the sum is over the row's D values
        x *= tl.rsqrt(tl.sum(x * x, axis=0) / D + eps2) * tl.load(w2_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_MOD:
        scale = tl.load(scale_ptr + row * s_sc + offs, mask=mask, other=0.0).to(tl.float32)
        shift = tl.load(shift_ptr + row * s_sh + offs, mask=mask, other=0.0).to(tl.float32)
        x = x * (1.0 + scale) + shift
    tl.store(x_ptr + row * s_x + offs, x.to(x_ptr.dtype.element_ty), mask=mask)


def add_norm_modulate_triton(
    y: Tensor,
    gate: Tensor | None,
    residual: Tensor | None,
    weight: Tensor,
    shift: Tensor | None,
    scale: Tensor | None,
    eps: float,
    residual_dtype: torch.dtype,
    y_norm: DeferredNorm | None = None,
    second_norm: tuple[Tensor, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """``residual' = residual + gate * y``; returns ``(rmsnorm(residual') * weight * (1 + scale) + shift, residual')``.

    All (B, D); ``gate``, ``residual`` and the modulation may be ``None``. The normed
    output is in ``weight.dtype``, the new residual in ``residual_dtype``. ``y_norm``: ``y``
    times its ``rstd`` in place of ``y``. ``second_norm`` (weight, eps): a second RMSNorm before
    the modulation.
    """
    y, gate, residual, shift, scale = (last_dim_contiguous(t) for t in (y, gate, residual, shift, scale))
    b, d = y.shape
    x = torch.empty(b, d, device=y.device, dtype=weight.dtype)
    res_out = torch.empty(b, d, device=y.device, dtype=residual_dtype)
    has_mod = shift is not None and scale is not None
    block = triton.next_power_of_2(d)
    sq = y_norm.sumsq if y_norm is not None else y
    parts = sq.shape[1] if y_norm is not None else 1
    w2, eps2 = second_norm if second_norm is not None else (weight, 0.0)
    _add_norm_modulate_kernel[(b,)](
        y, gate if gate is not None else y, residual if residual is not None else y, weight,
        shift if has_mod else y, scale if has_mod else y, x, res_out, sq, w2,
        d, eps, y.stride(0), gate.stride(0) if gate is not None else 0,
        residual.stride(0) if residual is not None else 0, shift.stride(0) if has_mod else 0,
        scale.stride(0) if has_mod else 0, x.stride(0), res_out.stride(0), sq.stride(0), parts,
        y_norm.size if y_norm is not None else 1, y_norm.eps if y_norm is not None else 0.0, eps2,
        HAS_GATE=gate is not None, HAS_RES=residual is not None, HAS_MOD=has_mod, Y_NORM=y_norm is not None,
        SECOND_NORM=second_norm is not None, BLOCK_D=block, BLOCK_Q=triton.next_power_of_2(parts), USE_PDL=use_pdl(),
        num_warps=4 if block <= 1024 else 8, **pdl_options(),
    )
    return x, res_out
