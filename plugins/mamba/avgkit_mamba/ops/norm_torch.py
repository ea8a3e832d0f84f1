"""PyTorch references of the norms in a decode step (the CPU path and the kernels' oracle).

* :func:`rms_norm`: ``RMSNorm`` of the backbone (fp32 math, rounded once).
* :func:`gated_rms_norm`: the mixer's grouped ``rmsnorm(x * silu(z)) * weight``
  (``GatedRMSNorm``; Triton: the epilogue of :mod:`triton_step`).
* :func:`add_norm_modulate`: a decode step's block boundary, ``residual += gate * y``,
  RMSNorm (at the last boundary two: ``norm_f``, then the final layer's), adaLN modulation
  (Triton: :mod:`triton_norm`).
* :class:`DeferredNorm`: the mixer's norm left to that boundary (one norm group).
* :func:`fold_boundary`: that boundary done by the mixer's ``out_proj`` for the next block
  (:class:`NextBoundary` in, :class:`FoldedInput` out; Triton: :mod:`triton_out_proj`), all but
  the next norm's per-row factor, which the next ``in_proj`` applies as it loads its input.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DeferredNorm", "FoldedInput", "NextBoundary", "add_norm_modulate", "fold_boundary", "gated_rms_norm",
           "rms_norm"]


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


class NextBoundary(NamedTuple):
    """The block boundary after a mixer, for its ``out_proj`` to fold in: this block's gate (``None``: none), the next
    block's norm (weight, eps) and modulation (``None``: none), and the residual's dtype."""

    gate: Tensor | None  # (b, d_model)
    weight: Tensor  # (d_model,)
    eps: float
    shift: Tensor | None  # (b, d_model)
    scale: Tensor | None
    residual_dtype: torch.dtype | None  # None: the mixer output's


class FoldedInput(NamedTuple):
    """A block's input with its boundary folded into the previous ``out_proj``, all but the norm's per-row factor:
    ``x = a * rsqrt(sum(sumsq) / d_model + eps) + shift`` (RMSNorm is ``residual * rstd * weight``, and ``rstd`` is
    one scalar a row, so the rest can be applied column by column before the row's sum is known)."""

    a: Tensor  # (b, d_model), the model's dtype: residual * norm weight * (1 + scale)
    sumsq: Tensor  # (b, parts) fp32: sums of residual^2 over disjoint parts of a row
    shift: Tensor | None  # (b, d_model)
    residual: Tensor  # (b, d_model): the new residual
    eps: float

    def rstd(self) -> Tensor:
        """(b, 1) fp32: ``rsqrt(mean(residual^2) + eps)``."""
        return torch.rsqrt(self.sumsq.float().sum(-1, keepdim=True) / self.a.shape[-1] + self.eps)

    def x(self) -> Tensor:
        """The block's input as the boundary's own op would give it (up to rounding), in ``a``'s dtype."""
        x = self.a.float() * self.rstd()
        return (x if self.shift is None else x + self.shift.float()).to(self.a.dtype)


def fold_boundary(y: Tensor, y_norm: DeferredNorm, weight: Tensor, then: NextBoundary,
                  residual: Tensor | None) -> FoldedInput:
    """``out_proj`` (``weight``) of a mixer's unnormed output ``y`` scaled by its deferred norm, gated, added to
    ``residual``, then the next block's norm weight and modulation but the norm's factor (:class:`FoldedInput`)."""
    h = F.linear(y, weight).float() * y_norm.rstd()
    if then.gate is not None:
        h = h * then.gate.float()
    if residual is not None:
        h = h + residual.float()
    h = h.to(then.residual_dtype or y.dtype)
    a = h.float() * then.weight.float()
    if then.scale is not None:
        a = a * (1 + then.scale.float())
    return FoldedInput(a.to(y.dtype), h.float().square().sum(-1, keepdim=True), then.shift, h, then.eps)


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
