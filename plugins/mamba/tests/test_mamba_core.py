"""A mixer's whole-sequence core as one op (conv, scan, gated norm): when it runs, and its numbers on a GPU.

Its kernels against the PyTorch path on the CPU interpreter: ``mamba_interpret_checks.py core``.
"""

from __future__ import annotations

import pytest
import torch
from avgkit_mamba.mixer import Mamba2Mixer
from avgkit_mamba.ops import dispatch


def test_core_applies_only_to_triton_whole_sequences() -> None:
    zx = torch.empty(1, 4, 8)
    assert not dispatch.mixer_core_applies(zx, 4, 256, "auto")  # CPU: PyTorch
    assert not dispatch.mixer_core_applies(zx, 4, 256, "torch")
    with pytest.raises(Exception, match="needs CUDA tensors"):
        dispatch.mixer_core_applies(zx, 4, 256, "triton")


def test_mixer_cpu_path_unchanged_by_the_switch() -> None:
    """On the CPU the mixer runs the three ops whatever the switch says: same bits either way."""
    torch.manual_seed(0)
    mixer = Mamba2Mixer(32, d_state=16, headdim=16, chunk_size=16)
    x = torch.randn(2, 20, 32)
    saved = dispatch.TRITON_MIXER_CORE
    try:
        outs = []
        for flag in (True, False):
            dispatch.TRITON_MIXER_CORE = flag
            outs.append(mixer(x))
    finally:
        dispatch.TRITON_MIXER_CORE = saved
    assert torch.equal(outs[0], outs[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [256, 64])
def test_core_matches_three_ops_on_gpu(dtype: torch.dtype, chunk: int) -> None:
    """AiM-B's mixer (in_proj rows of 3352, a stride the kernels align by 8), its 256 tokens as one chunk or four:
    the one-op core against the three ops and the PyTorch path in fp64, output and every gradient, and the same
    bits on a second run."""
    pytest.importorskip("triton")
    torch.manual_seed(0)
    mixer = Mamba2Mixer(768, d_state=128, headdim=64, chunk_size=chunk, impl="triton", device="cuda")
    x = torch.randn(2, 256, 768, device="cuda")
    dy = torch.randn(2, 256, 768, device="cuda")

    def run(model: torch.nn.Module, xin: torch.Tensor, core: bool, autocast: bool) -> list[torch.Tensor]:
        saved, dispatch.TRITON_MIXER_CORE = dispatch.TRITON_MIXER_CORE, core
        try:
            model.zero_grad(set_to_none=True)
            leaf = xin.detach().clone().requires_grad_()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                y = model(leaf)
            (y.double() * dy.double()).sum().backward()
        finally:
            dispatch.TRITON_MIXER_CORE = saved
        return [y.detach(), leaf.grad] + [p.grad.clone() for p in model.parameters()]

    exact_model = Mamba2Mixer(768, d_state=128, headdim=64, chunk_size=chunk, impl="torch", device="cuda").double()
    exact_model.load_state_dict(mixer.state_dict())
    exact = run(exact_model, x.double(), False, False)
    bf16 = dtype == torch.bfloat16
    got = run(mixer, x, True, bf16)
    three = run(mixer, x, False, bf16)
    names = ["y", "dx"] + [n for n, _ in mixer.named_parameters()]
    for name, a, t, r in zip(names, got, three, exact, strict=True):
        err = ((a.double() - r).abs().max() / r.abs().max()).item()
        err3 = ((t.double() - r).abs().max() / r.abs().max()).item()
        # as close to fp64 as the three ops are, within a factor for rounding order
        assert err <= max(1e-4, 2 * err3), f"{name}: {err:.2e} (three ops {err3:.2e})"
    again = run(mixer, x, True, bf16)
    assert all(torch.equal(a, b) for a, b in zip(got, again, strict=True)), "the core is not deterministic"
