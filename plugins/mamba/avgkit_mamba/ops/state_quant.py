"""The one-byte decoding state: int8 values with one fp32 scale per (head, head-dim row).

A row of the SSM state (``d_state`` values of one head-dim channel) is stored as
``q = round(v * 127 / absmax)`` (half to even, so ``|q| <= 127``) in int8 beside
``scale = absmax / 127`` in fp32, and read back as ``q * scale``. A row whose largest
magnitude is at most ``FLUSH`` (1e-30; a decaying state gets there) stores zeros and
scale 0: ``127 / absmax`` overflows to infinity below about 4e-37. The step computes in
fp32 between the load and the store; the Triton kernels round with the same rule (by
float addition, ``triton_common._round_to_int8``), so both paths agree to one quantum (a
GPU fuses the multiply into the addition).

Why per row: every program of the decode kernels holds whole rows of its state tile, so
each scale is computed from values the program has in registers (no reduction across
programs); the scales add 4 bytes per 128 state bytes (3%). fp8 e4m3 was not chosen: its
3-bit mantissa rounds a decaying state about 16 times more coarsely near its row maximum
than int8 does, and the CPU interpreter cannot check fp8 kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["FLUSH", "INT8_LEVELS", "dequantize_rows", "load_state", "quantize_rows_", "store_state_",
           "store_state_where_"]

#: largest stored magnitude (the range is symmetric: -127 .. 127)
INT8_LEVELS = 127.0
#: rows whose largest magnitude is at most this are stored as zeros (the kernels' quantiser reads it too)
FLUSH = 1e-30


def dequantize_rows(q: Tensor, scale: Tensor) -> Tensor:
    """int8 ``q`` (..., n) with ``scale`` (...) -> fp32 values."""
    return q.float() * scale.float()[..., None]


def quantize_rows_(values: Tensor, q: Tensor, scale: Tensor) -> None:
    """Write ``values`` (..., n), any float dtype, into int8 ``q`` and fp32 ``scale`` (...) in place."""
    v = values.float()
    absmax = v.abs().amax(-1)
    kept = absmax > FLUSH
    inv = torch.where(kept, INT8_LEVELS / absmax, torch.zeros_like(absmax))
    q.copy_(torch.round(v * inv[..., None]).to(torch.int8))
    scale.copy_(torch.where(kept, absmax / INT8_LEVELS, torch.zeros_like(absmax)))


def load_state(state: Tensor, scale: Tensor | None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The state's values in ``dtype``: dequantised when ``scale`` is given (int8 state)."""
    if scale is None:
        return state.to(dtype)
    if state.dtype != torch.int8:
        raise ValueError(f"a state with scales must be int8, got {state.dtype}; allocate it with ssm_dtype=torch.int8")
    return dequantize_rows(state, scale).to(dtype)


def store_state_(state: Tensor, scale: Tensor | None, values: Tensor) -> None:
    """Write ``values`` into ``state`` in place: quantised per row when ``scale`` is given, else rounded once."""
    if scale is None:
        state.copy_(values)
    else:
        quantize_rows_(values, state, scale)


def store_state_where_(state: Tensor, scale: Tensor | None, values: Tensor, cond: Tensor) -> None:
    """:func:`store_state_` where the (1,) bool ``cond`` holds, else leave the state as it is (no host sync)."""
    if scale is None:
        state.copy_(torch.where(cond, values.to(state.dtype), state))
        return
    q, s = torch.empty_like(state), torch.empty_like(scale)
    quantize_rows_(values, q, s)
    state.copy_(torch.where(cond, q, state))
    scale.copy_(torch.where(cond, s, scale))
