"""Counter-based random numbers: ``u(seed, index, step)`` with no generator state.

Each image ``index`` draws its step-``step`` uniform from a hash of the triple, so a
sample depends only on (seed, index, class) whatever the batch it is generated in,
and the draw is a pure tensor op that a CUDA graph can capture.
"""

from __future__ import annotations

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    # "lowbias32" integer hash; int64 products wrap, the low 32 bits stay exact.
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def uniform(seed: int | Tensor, index: Tensor, step: int | Tensor) -> Tensor:
    """Uniform floats in (0, 1), float64, one per entry of ``index`` (int64).

    ``seed`` and ``step`` may be Python ints or device tensors (for graph capture).
    """
    index = index.to(torch.int64)
    h = _mix32((torch.zeros_like(index) + torch.as_tensor(seed, device=index.device, dtype=torch.int64)) & _M32)
    h = _mix32(h ^ (index & _M32))
    h = _mix32(h ^ ((index >> 32) & _M32) ^ 0x9E3779B9)
    h = _mix32(h ^ (torch.as_tensor(step, device=index.device, dtype=torch.int64) & _M32))
    lo = _mix32(h ^ 0x85EBCA6B)
    # 32 + 21 bits -> a double in (0, 1)
    return ((h.double() * 2.0**21 + (lo >> 11).double()) + 0.5) / 2.0**53
