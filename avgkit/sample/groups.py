"""Run a batched function on groups of exactly one size, so its kernels see one shape.

GPU kernels round differently for different batch shapes; feeding every call the same
number of rows (the last group padded with copies of its last row, dropped afterwards)
makes a row's result independent of how many rows were asked for at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def _pad_rows(p: Any, extra: int) -> Any:
    if isinstance(p, Tensor):
        return torch.cat([p, p[-1:].expand(extra, *p.shape[1:])])
    return p.expand_last(extra)  # avgkit.conditions.Conditions


def in_fixed_groups(fn: Callable[..., Tensor], width: int | None, *rows: Any) -> Tensor:
    """``fn(*rows)``, computed ``width`` rows at a time (``None``: all at once).

    ``rows`` are tensors or :class:`avgkit.conditions.Conditions` batches.
    """
    n = len(rows[0])
    if width is None or n == width:
        return fn(*rows)
    out = []
    for start in range(0, n, width):
        part = [r[start : start + width] for r in rows]
        k = len(part[0])
        if k < width:  # rows never influence each other, so copies of the last one are inert
            part = [_pad_rows(p, width - k) for p in part]
        out.append(fn(*part)[:k])
    return torch.cat(out)
