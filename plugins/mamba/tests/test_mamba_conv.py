"""Depthwise causal conv: whole sequence, carried state and single steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from avgkit_mamba.ops.conv_torch import causal_conv1d, conv_step


def _setup(seed: int = 0, b: int = 2, d: int = 6, seqlen: int = 11, w: int = 4):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, seqlen, generator=gen), torch.randn(d, w, generator=gen), torch.randn(d, generator=gen))


def test_matches_padded_conv1d() -> None:
    x, weight, bias = _setup()
    w = weight.shape[1]
    expected = F.silu(F.conv1d(x, weight.unsqueeze(1), bias, padding=w - 1, groups=x.shape[1])[..., : x.shape[-1]])
    torch.testing.assert_close(causal_conv1d(x, weight, bias), expected)
    raw = causal_conv1d(x, weight, bias, activation=None)
    torch.testing.assert_close(F.silu(raw), expected)


def test_carried_state_equals_one_shot() -> None:
    x, weight, bias = _setup()
    full, final_full = causal_conv1d(x, weight, bias, return_final_state=True)
    first, state = causal_conv1d(x[..., :2], weight, bias, return_final_state=True)
    second, final = causal_conv1d(x[..., 2:], weight, bias, initial_state=state, return_final_state=True)
    torch.testing.assert_close(torch.cat([first, second], -1), full)
    torch.testing.assert_close(final, final_full)
    torch.testing.assert_close(final_full, x[..., -4:])


def test_final_state_is_zero_padded_for_short_inputs() -> None:
    x, weight, bias = _setup(seqlen=2)
    _, final = causal_conv1d(x, weight, bias, return_final_state=True)
    assert final.shape == (2, 6, 4)
    assert torch.equal(final[..., :2], torch.zeros(2, 6, 2))
    assert torch.equal(final[..., 2:], x)


def test_steps_reproduce_whole_sequence() -> None:
    x, weight, bias = _setup()
    full, final = causal_conv1d(x, weight, bias, return_final_state=True)
    state = torch.zeros(2, 6, 4)
    ys = [conv_step(x[..., t], state, weight, bias) for t in range(x.shape[-1])]
    torch.testing.assert_close(torch.stack(ys, -1), full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, final)
