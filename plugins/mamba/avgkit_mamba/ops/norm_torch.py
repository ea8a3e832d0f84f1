"""PyTorch references of the norms in a decode step (the CPU path and the kernels' oracle).

* :func:`rms_norm`: ``RMSNorm`` of the backbone (fp32 math, rounded once).
* :func:`gated_rms_norm`: the mixer's grouped ``rmsnorm(x * silu(z)) * weight``
  (``GatedRMSNorm``; Triton: the epilogue of :mod:`triton_step`).
* :func:`add_norm_modulate`: a decode step's block boundary, ``residual += gate * y``,
  RMSNorm, adaLN modulation (Triton: :mod:`triton_norm`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["add_norm_modulate", "gated_rms_norm", "rms_norm"]


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``x * rsqrt(mean(x^2) + eps) * weight`` over the last dim in fp32; in ``weight.dtype`` for fp32 input,
    else in ``x.dtype``."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(weight.dtype if x.dtype == torch.float32 else x.dtype)


def gated_rms_norm(x: Tensor, z: Tensor | None, weight: Tensor, eps: float, group_size: int) -> Tensor:
    """``rmsnorm(x * silu(z)) * weight`` over groups of ``group_size`` channels, fp32 math, in ``x.dtype``."""
    xf = x.float()
    if z is not None:
        xf = xf * F.silu(z.float())
    grouped = xf.unflatten(-1, (-1, group_size))
    normed = grouped * torch.rsqrt(grouped.square().mean(-1, keepdim=True) + eps)
    return (normed.flatten(-2) * weight.float()).to(x.dtype)


def add_norm_modulate(y: Tensor, gate: Tensor | None, residual: Tensor | None, weight: Tensor, eps: float,
                      shift: Tensor | None, scale: Tensor | None, residual_in_fp32: bool) -> tuple[Tensor, Tensor]:
    """One token's block boundary over (B, D): returns ``(x, residual')``.

    ``residual' = residual + gate * y`` (fp32 when ``residual_in_fp32``), ``x =
    rms_norm(residual') * (1 + scale) + shift`` in ``weight.dtype``; any of gate,
    residual and the modulation may be ``None``.
    """
    h = y if gate is None else gate.to(y.dtype) * y
    residual = h if residual is None else h + residual
    if residual_in_fp32:
        residual = residual.float()
    x = rms_norm(residual.to(weight.dtype), weight, eps)
    if shift is not None and scale is not None:
        x = (x * (1 + scale) + shift).to(x.dtype)
    return x, residual
