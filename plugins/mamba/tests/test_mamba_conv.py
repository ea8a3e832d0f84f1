"""Depthwise causal conv: whole sequence, carried state and single steps."""

from __future__ import annotations

import pytest
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


def test_dispatch_torch_path_is_channels_last() -> None:
    """``dispatch.causal_conv`` takes and returns (b, l, d): the mixer's layout, no transposes around it."""
    from avgkit_mamba.ops.dispatch import causal_conv

    x, weight, bias = _setup(seqlen=9)
    got = causal_conv(x.transpose(1, 2), weight, bias, impl="torch")
    assert got.shape == (2, 9, 6) and got.is_contiguous()
    torch.testing.assert_close(got, causal_conv1d(x, weight, bias).transpose(1, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_conv_matches_torch_on_gpu(dtype: torch.dtype) -> None:
    """The Triton conv at AiM-B's width (1792 channels, a column slice of in_proj's output) against the PyTorch
    conv in fp64: output and the three gradients, and the same bits on a second run."""
    pytest.importorskip("triton")
    from avgkit_mamba.ops.dispatch import causal_conv

    gen = torch.Generator(device="cuda").manual_seed(0)
    wide = torch.randn(4, 256, 3352, device="cuda", generator=gen).to(dtype)
    x = wide[..., 1536:1536 + 1792]
    weight = torch.randn(1792, 4, device="cuda", generator=gen) * 0.5
    bias = torch.randn(1792, device="cuda", generator=gen)
    dy = torch.randn(4, 256, 1792, device="cuda", generator=gen)

    def run(impl: str, *ts: torch.Tensor) -> list[torch.Tensor]:
        leaves = [t.detach().clone().requires_grad_() for t in ts]
        y = causal_conv(*leaves, impl=impl)
        (y.double() * dy.double()).sum().backward()
        return [y.detach(), *(t.grad for t in leaves)]

    exact = run("torch", x.double(), weight.double(), bias.double())
    got = run("triton", x, weight, bias)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for name, a, r in zip(("y", "dx", "dw", "dbias"), got, exact, strict=True):
        err = ((a.double() - r).abs().max() / r.abs().max()).item()
        assert err <= tol, f"{name}: {err:.2e} > {tol}"
    again = run("triton", x, weight, bias)
    assert all(torch.equal(a, b) for a, b in zip(got, again, strict=True)), "the Triton conv is not deterministic"
