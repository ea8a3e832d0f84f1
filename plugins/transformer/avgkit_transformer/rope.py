"""2D rotary position embeddings over the token grid, in LlamaGen's layout.

A head of ``head_dim`` channels is rotated as ``head_dim / 2`` interleaved pairs
``(x[2j], x[2j + 1])``. The first ``head_dim / 4`` pairs turn with the token's grid
row, the last ``head_dim / 4`` with its grid column, both at the frequencies
``base ** (-4j / head_dim)`` for ``j < head_dim / 4``. Prefix (condition) positions are
not on the grid: LlamaGen gives them an all-zero cos/sin row, which zeroes their
queries and keys (``prefix_rope="zero"``); ``"identity"`` leaves them unrotated.

Angles are recomputed in float32 from integer positions on every call instead of
being stored, so casting the module to bf16 never rounds the table, and one decoding
step needs only tensor ops (CUDA-graph friendly).
"""

from __future__ import annotations

import torch
from torch import Tensor


def inverse_frequencies(head_dim: int, base: float, device: torch.device | None = None) -> Tensor:
    """``(head_dim // 4,)`` float32 frequencies shared by the row and column halves."""
    half = head_dim // 2
    exponents = torch.arange(0, half, 2, device=device)[: half // 2].float() / half
    return 1.0 / (base**exponents)


def rotation_table(
    cells: Tensor, is_prefix: Tensor, *, width: int, head_dim: int, base: float, prefix_rope: str
) -> Tensor:
    """cos/sin table ``(T, head_dim // 2, 2)`` float32 for sequence entries.

    ``cells``: ``(T,)`` int64 raster index of each image token on the grid (ignored
    where ``is_prefix``); ``is_prefix``: ``(T,)`` bool marking condition positions.
    """
    freqs = inverse_frequencies(head_dim, base, cells.device)
    cells = cells.clamp(min=0)
    rows = (cells // width).float()[:, None] * freqs
    cols = (cells % width).float()[:, None] * freqs
    # angle 0 (cos 1, sin 0) leaves prefix rows unrotated; "zero" then blanks them
    angles = torch.cat([rows, cols], dim=-1).masked_fill(is_prefix[:, None], 0.0)  # (T, head_dim // 2)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    if prefix_rope == "zero":
        table = table.masked_fill(is_prefix[:, None, None], 0.0)
    return table


def apply_rotary(x: Tensor, table: Tensor) -> Tensor:
    """Rotate ``x`` ``(B, T, H, head_dim)`` by ``table`` ``(T, head_dim // 2, 2)``, in float32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos = table[None, :, None, :, 0]
    sin = table[None, :, None, :, 1]
    real, imag = pairs[..., 0], pairs[..., 1]
    out = torch.stack([real * cos - imag * sin, imag * cos + real * sin], dim=-1)
    return out.flatten(-2).type_as(x)
