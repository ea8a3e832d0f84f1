"""Depthwise causal 1-D convolution (Mamba's short conv), whole sequence and one step.

The conv state of a channel holds its last ``w`` inputs (oldest first), the layout of
mamba-ssm's decoding cache; a step shifts the window left and appends the new input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_conv1d", "conv_step"]

#: Under torch.compile on a GPU, convolve by w shifted multiply-adds (which inductor fuses with
#: the activation, forward and backward) instead of the depthwise conv1d kernel: an opaque call
#: that was 24% of a compiled AiM-B training step on an H100; the shifts made the step 1.19x
#: (AiM-B) and 1.20x (AiM-L) faster there (benchmarks/results/train_step_compiled_h100.json).
#: Where the Triton impl applies, the whole-sequence conv runs as ``triton_conv``'s kernels
#: instead (``dispatch.causal_conv``); this form serves ``impl: torch``.
SHIFTS_WHEN_COMPILING = True


def _activate(y: Tensor, activation: str | None) -> Tensor:
    if activation is None:
        return y
    if activation in ("silu", "swish"):
        return F.silu(y)
    raise ValueError(f"unknown conv activation {activation!r}; use 'silu' or None")


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    initial_state: Tensor | None = None,
    activation: str | None = "silu",
    return_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``y[:, :, t] = act(bias + sum_k weight[:, k] * x[:, :, t - w + 1 + k])``.

    Args: x (b,d,l), weight (d,w), bias (d,), initial_state (b,d,w): the inputs that
    precede ``x`` (zeros when None). Returns y (b,d,l) in ``x.dtype`` and, when
    ``return_final_state``, the last ``w`` inputs (b,d,w) in the initial state's dtype
    (``x.dtype`` without one), zero-padded when fewer exist.
    """
    b, d, _ = x.shape
    w = weight.shape[-1]
    if initial_state is None:
        history = x.new_zeros(b, d, w)
    else:
        history = initial_state.to(x.dtype)
    padded = torch.cat([history[:, :, 1:], x], dim=-1)
    wt = weight.to(x.dtype)
    if x.device.type == "cpu" or (SHIFTS_WHEN_COMPILING and torch.compiler.is_compiling()):
        # w shifted multiply-adds: CPU depthwise conv1d (and above all its backward) is far slower
        length = x.shape[-1]
        y = sum(wt[:, k, None] * padded[:, :, k : k + length] for k in range(w))
        if bias is not None:
            y = y + bias.to(x.dtype)[:, None]
    else:
        y = F.conv1d(padded, wt.unsqueeze(1), None if bias is None else bias.to(x.dtype), groups=d)
    y = _activate(y, activation)
    if not return_final_state:
        return y
    state_dtype = x.dtype if initial_state is None else initial_state.dtype
    final = torch.cat([history, x], dim=-1)[:, :, -w:].to(state_dtype)
    return y, final


def conv_step(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = "silu",
) -> Tensor:
    """One token: shift ``conv_state`` (b,d,w) in place, append ``x`` (b,d); returns (b,d).

    Computed in fp32 and returned in ``x.dtype``.
    """
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x.to(conv_state.dtype)
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = (conv_state.to(ct) * weight.to(ct)).sum(dim=-1)
    if bias is not None:
        y = y + bias.to(ct)
    return _activate(y, activation).to(x.dtype)
