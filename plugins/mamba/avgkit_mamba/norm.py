"""RMSNorm with an optional SiLU gate, as in mamba-ssm's Mamba-2 (``norm_before_gate=False``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from avgkit_mamba.ops.norm_torch import gated_rms_norm

__all__ = ["GatedRMSNorm"]


class GatedRMSNorm(nn.Module):
    """``rmsnorm(x * silu(z)) * weight``, normalised over groups of ``group_size``.

    Computed in fp32, returned in ``x.dtype``. Without ``z`` it is a plain (grouped)
    RMSNorm. Parameter: ``weight`` (dim,), initialised to ones.
    """

    def __init__(
        self,
        dim: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        group_size = dim if group_size is None else group_size
        if dim % group_size:
            raise ValueError(f"norm dim {dim} is not a multiple of group_size {group_size}")
        self.eps = eps
        self.group_size = group_size
        self.recompute = True  # keep only the inputs for backward (see forward)
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        if self.recompute and torch.is_grad_enabled() and (x.requires_grad or (z is not None and z.requires_grad)):
            # keep only x and z for backward and recompute the fp32 intermediates there:
            # they are (B, L, d_inner) fp32 tensors, otherwise most of a layer's activations
            return checkpoint(self._norm, x, z, use_reentrant=False)
        return self._norm(x, z)

    def _norm(self, x: Tensor, z: Tensor | None) -> Tensor:
        return gated_rms_norm(x, z, self.weight, self.eps, self.group_size)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}"
