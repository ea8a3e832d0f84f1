"""Random SSD problems shared by the tests and the interpreter checks."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def ssd_problem(
    b: int, seqlen: int, h: int, p: int, g: int, n: int, *, dtype: torch.dtype = torch.float32, seed: int = 0,
    with_D: bool = True, with_z: bool = False, with_init: bool = False,
) -> dict[str, Tensor | None]:
    """Inputs of a chunked scan; dt is raw (use dt_bias and softplus)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return {
        "x": r(b, seqlen, h, p).to(dtype),
        "dt": (r(b, seqlen, h) - 1.0).to(dtype),
        "A": -torch.rand(h, generator=gen) * 3 - 0.5,
        "B": r(b, seqlen, g, n).to(dtype),
        "C": r(b, seqlen, g, n).to(dtype),
        "D": r(h) if with_D else None,
        "z": r(b, seqlen, h, p).to(dtype) if with_z else None,
        "dt_bias": r(h) * 0.5,
        "initial_states": r(b, h, p, n) if with_init else None,
    }


def max_rel_err(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max(max |b|, 1e-6)."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()
