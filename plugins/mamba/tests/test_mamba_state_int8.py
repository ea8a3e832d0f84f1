"""The one-byte decoding state: int8 rows with fp32 scales, in the torch reference path."""

from __future__ import annotations

import pytest
import torch
from avgkit_mamba.mixer import Mamba2Mixer
from avgkit_mamba.ops.ssd_torch import ssd_step
from avgkit_mamba.ops.state_quant import dequantize_rows, load_state, quantize_rows_


def _mixer() -> Mamba2Mixer:
    torch.manual_seed(0)
    return Mamba2Mixer(32, d_state=16, headdim=8, ngroups=2, chunk_size=8, impl="torch")


def test_quantisation_error_is_at_most_half_a_quantum_per_row() -> None:
    v = torch.randn(3, 4, 8, 16) * torch.logspace(-3, 2, 8)[:, None]  # rows of very different magnitude
    v[0, 0, 0] = 0.0
    q, scale = torch.empty(v.shape, dtype=torch.int8), torch.empty(v.shape[:-1])
    quantize_rows_(v, q, scale)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    assert torch.equal(q[0, 0, 0], torch.zeros(16, dtype=torch.int8)) and scale[0, 0, 0] == 0
    err = (dequantize_rows(q, scale) - v).abs()
    assert (err <= 0.5 * scale[..., None] * (1 + 1e-5) + 1e-30).all()
    # each row's maximum is stored exactly (as +-127)
    torch.testing.assert_close(dequantize_rows(q, scale).abs().amax(-1), v.abs().amax(-1))


def test_rows_too_small_to_scale_store_zeros() -> None:
    """127 / absmax overflows below about 4e-37: such rows (a long-decayed state) store zeros, never -128."""
    v = torch.tensor([[1e-38, -2e-38, 0.0], [1e-31, 3e-31, -5e-31], [2e-30, -1e-30, 0.0]])
    q, scale = torch.empty(v.shape, dtype=torch.int8), torch.empty(3)
    quantize_rows_(v, q, scale)
    assert q[:2].eq(0).all() and scale[:2].eq(0).all() and torch.isfinite(scale).all()
    assert q[2].tolist() == [127, -64, 0] and scale[2] == torch.tensor(2e-30) / 127


def test_int8_step_matches_the_fp32_step_to_quantisation_error() -> None:
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    b, h, p, g, n = 2, 4, 8, 2, 16
    s32 = r(b, h, p, n)
    q, scale = torch.empty(s32.shape, dtype=torch.int8), torch.empty(b, h, p)
    quantize_rows_(s32, q, scale)
    s32 = dequantize_rows(q, scale)  # the same starting values
    A, D, dt_bias = -torch.rand(h, generator=gen) * 3, r(h), r(h)
    for _ in range(4):
        x, dt, B, C = r(b, h, p), r(b, h), r(b, g, n), r(b, g, n)
        y32 = ssd_step(s32, x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=True)
        y8 = ssd_step(q, x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=True, state_scale=scale)
        rel = (y8 - y32).abs().max() / y32.abs().max()
        assert rel < 2e-2, rel
        assert (dequantize_rows(q, scale) - s32).abs().max() / s32.abs().max() < 2e-2
    with pytest.raises(ValueError, match="must be int8"):
        load_state(s32, scale)


def test_int8_state_allocation_prefill_select_and_zero() -> None:
    m = _mixer()
    state = m.allocate_state(3, ssm_dtype=torch.int8)
    assert state.ssm.dtype == torch.int8 and state.scale.shape == (3, 8, 8) and state.scale.dtype == torch.float32
    x = torch.randn(3, 21, 32)
    with torch.no_grad():
        y = m(x)
        ref = m.allocate_state(3)
        m(x[:, :9], ref)
        y_pre = m(x[:, :9], state)  # prefill writes the quantised final state
        assert state.scale.abs().sum() > 0
        torch.testing.assert_close(state.ssm_values(), ref.ssm, atol=ref.ssm.abs().max().item() / 250, rtol=0)
        y_steps = torch.stack([m.step(x[:, t], state) for t in range(9, 21)], dim=1)
    full = torch.cat([y_pre, y_steps], 1)
    assert ((full - y).abs().max() / y.abs().max()).item() < 1e-2
    picked = state.select(torch.tensor([2, 0]))
    assert torch.equal(picked.ssm[0], state.ssm[2]) and torch.equal(picked.scale[1], state.scale[0])
    state.zero_()
    assert torch.count_nonzero(state.ssm) == 0 and torch.count_nonzero(state.scale) == 0
    with pytest.raises(ValueError, match="use a float dtype or torch.int8"):
        m.allocate_state(1, ssm_dtype=torch.int16)
