"""2D rotary embeddings: LlamaGen's layout and the relative-position property."""

from __future__ import annotations

import pytest
import torch
from avgkit_transformer.rope import apply_rotary, inverse_frequencies, rotation_table


def _table(cells, prefix=None, width=4, head_dim=8, mode="zero"):
    cells = torch.as_tensor(cells)
    is_prefix = torch.zeros_like(cells, dtype=torch.bool) if prefix is None else torch.as_tensor(prefix)
    return rotation_table(cells, is_prefix, width=width, head_dim=head_dim, base=10000.0, prefix_rope=mode)


def test_rows_then_columns_layout():
    head_dim, width = 16, 5
    freqs = 10000.0 ** (-torch.arange(0, head_dim // 2, 2).float() / (head_dim // 2))
    assert torch.allclose(inverse_frequencies(head_dim, 10000.0), freqs)
    table = _table([0, 7, 23], width=width, head_dim=head_dim)
    assert table.shape == (3, head_dim // 2, 2)
    for i, cell in enumerate([0, 7, 23]):
        row, col = divmod(cell, width)
        angles = torch.cat([row * freqs, col * freqs])
        assert torch.allclose(table[i, :, 0], torch.cos(angles))
        assert torch.allclose(table[i, :, 1], torch.sin(angles))


def test_a_4x8_grid_turns_by_its_4_rows_and_8_columns():
    head_dim = 16
    freqs = inverse_frequencies(head_dim, 10000.0)
    table = _table(torch.arange(32), width=8, head_dim=head_dim)
    rows = torch.arange(4).repeat_interleave(8).float()  # 0 x8, 1 x8, 2 x8, 3 x8
    cols = torch.arange(8).repeat(4).float()  # 0..7 in every row
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)  # row pairs first, then columns
    assert table.shape == (32, head_dim // 2, 2)
    assert torch.allclose(table[..., 0], torch.cos(angles)) and torch.allclose(table[..., 1], torch.sin(angles))
    # read as a square (or any other width), the same 32 cells turn otherwise
    assert not torch.allclose(table, _table(torch.arange(32), width=4, head_dim=head_dim))


@pytest.mark.parametrize("mode, expected", [("zero", (0.0, 0.0)), ("identity", (1.0, 0.0))])
def test_prefix_rows(mode, expected):
    table = _table([-1, 0, 3], prefix=[True, False, False], mode=mode)
    assert torch.equal(table[0], torch.tensor(expected).expand(4, 2))
    x = torch.randn(1, 3, 2, 8)
    out = apply_rotary(x, table)
    if mode == "zero":  # LlamaGen zeroes the prefix's queries and keys
        assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
    else:
        assert torch.equal(out[:, 0], x[:, 0])


def test_rotation_keeps_norms_and_is_relative():
    """q.k after rotation depends on the (row, column) offset only."""
    torch.manual_seed(0)
    width, head_dim = 6, 16
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(cq: int, ck: int) -> torch.Tensor:
        table = _table([cq, ck], width=width, head_dim=head_dim)
        x = torch.stack([q, k])[None, :, None]  # (1, 2, 1, head_dim)
        rq, rk = apply_rotary(x, table)[0, :, 0]
        return rq @ rk

    x = torch.stack([q, k])[None, :, None]
    rotated = apply_rotary(x, _table([8, 21], width=width, head_dim=head_dim))
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    # cells (row, col): (1,2)->(3,5) and (2,0)->(4,3) share the offset (2, 3)
    assert torch.allclose(score(1 * width + 2, 3 * width + 5), score(2 * width + 0, 4 * width + 3), atol=1e-4)
    assert not torch.allclose(score(1 * width + 2, 3 * width + 5), score(1 * width + 2, 3 * width + 4), atol=1e-4)


def test_keeps_input_dtype():
    x = torch.randn(2, 3, 1, 8, dtype=torch.bfloat16)
    assert apply_rotary(x, _table([0, 1, 2])).dtype == torch.bfloat16
