"""PyTorch references of the norms in a decode step (the CPU path and the kernels' oracle).

* :func:`rms_norm`: ``RMSNorm`` of the backbone (fp32 math, rounded once).
* :func:`gated_rms_norm`: the mixer's grouped ``rmsnorm(x * silu(z)) * weight``
  (``GatedRMSNorm``; Triton: the epilogue of :mod:`triton_step`).
* :func:`add_norm_modulate`: a decode step's block boundary, ``residual += gate * y``,
  RMSNorm (at the last boundary two: ``norm_f``, then the final layer's), adaLN modulation
  (Triton: :mod:`triton_norm`).
* :class:`DeferredNorm`: the mixer's norm left to that boundary (one norm group).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DeferredNorm", "add_norm_modulate", "gated_rms_norm", "rms_norm"]


class DeferredNorm(NamedTuple):
    """A mixer's gated RMSNorm with one group, its per-row factor left to the next block boundary.

    With one group, ``rstd`` is one scalar a row, so ``out_proj(g * rstd * w) == out_proj(g * w) * rstd``: the decode
    step writes ``g * w`` (``g = y * silu(z)``) and ``g^2``, and the boundary that adds the mixer's output to the
    residual sums those and scales the output by ``rstd`` (one launch a layer fewer than a norm of its own).
    """

    sumsq: Tensor  # (b, parts): sums of g^2 over disjoint parts of a row's channels (the decode step: one each)
    size: int  # channels the norm is over (d_inner)
    eps: float

    def rstd(self) -> Tensor:
        """(b, 1) fp32: ``rsqrt(mean(g^2) + eps)``."""
        return torch.rsqrt(self.sumsq.float().sum(-1, keepdim=True) / self.size + self.eps)

    def apply(self, y: Tensor) -> Tensor:
        """``y`` (b, size) times its row's ``rstd``, in fp32 and rounded to ``y.dtype``: the normed output."""
        return (y.float() * self.rstd()).to(y.dtype)


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
                      shift: Tensor | None, scale: Tensor | None, residual_in_fp32: bool,
                      y_norm: DeferredNorm | None = None, second_norm: tuple[Tensor, float] | None = None
                      ) -> tuple[Tensor, Tensor]:
    """One token's block boundary over (B, D): returns ``(x, residual')``.

    ``residual' = residual + gate * y`` (fp32 when ``residual_in_fp32``), ``x =
    rms_norm(residual') * (1 + scale) + shift`` in ``weight.dtype``; any of gate,
    residual and the modulation may be ``None``. ``y_norm``: ``y`` is scaled by its
    ``rstd`` first (in fp32, rounded to ``y.dtype``). ``second_norm`` (weight, eps): a second
    RMSNorm between the first and the modulation (the backbone's last boundary: ``norm_f``, then
    the final layer's norm and modulation).
    """
    if y_norm is not None:
        y = y_norm.apply(y)
    h = y if gate is None else gate.to(y.dtype) * y
    residual = h if residual is None else h + residual
    if residual_in_fp32:
        residual = residual.float()
    x = rms_norm(residual.to(weight.dtype), weight, eps)
    if second_norm is not None:
        x = rms_norm(x, *second_norm)
    if shift is not None and scale is not None:
        x = (x * (1 + scale) + shift).to(x.dtype)
    return x, residual
