"""Mamba2Mixer: reference parameter layout, initialisation, prefill and decode steps."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from avgkit_mamba.mixer import Mamba2Mixer, Mamba2State
from avgkit_mamba.ops.dispatch import resolve_impl


def _tiny(**kw) -> Mamba2Mixer:
    torch.manual_seed(0)
    return Mamba2Mixer(32, d_state=16, headdim=8, ngroups=2, chunk_size=8, impl="torch", **kw)


def test_reference_parameter_names_shapes_and_count() -> None:
    m = Mamba2Mixer(768)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (2 * 1536 + 2 * 128 + 24, 768),
        "conv1d.weight": (1792, 1, 4),
        "conv1d.bias": (1792,),
        "dt_bias": (24,),
        "A_log": (24,),
        "D": (24,),
        "norm.weight": (1536,),
        "out_proj.weight": (768, 1536),
    }
    expected = 768 * (2 * 1536 + 2 * 128 + 24) + (1792 * 4 + 1792) + 24 * 3 + 1536 + 1536 * 768
    assert sum(p.numel() for p in m.parameters()) == expected


def test_initialisation_follows_mamba2() -> None:
    m = Mamba2Mixer(512, headdim=16)  # 64 heads for meaningful ranges
    dt = F.softplus(m.dt_bias.detach())
    assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6
    assert math.log(dt.max() / dt.min()) > 1.0  # spread log-uniformly, not constant
    A = torch.exp(m.A_log.detach())
    assert A.min() >= 1.0 and A.max() <= 16.0
    assert torch.equal(m.D.detach(), torch.ones(64))
    assert torch.equal(m.norm.weight.detach(), torch.ones(1024))
    assert all(getattr(p, "_no_weight_decay", False) for p in (m.dt_bias, m.A_log, m.D))


def test_loads_reference_state_dict_strictly() -> None:
    src = _tiny()
    dst = Mamba2Mixer(32, d_state=16, headdim=8, ngroups=2, chunk_size=8)
    prefixed = {f"backbone.layers.0.mixer.{k}": v for k, v in src.state_dict().items()}
    own = {k.removeprefix("backbone.layers.0.mixer."): v for k, v in prefixed.items()}
    dst.load_state_dict(own, strict=True)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(dst(x), src(x))


def test_steps_reproduce_forward() -> None:
    m = _tiny()
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        y = m(x)
        state = m.allocate_state(2)
        ys = torch.stack([m.step(x[:, t], state) for t in range(21)], dim=1)
    torch.testing.assert_close(ys, y, rtol=1e-5, atol=1e-5)


def test_prefill_then_steps_equal_forward() -> None:
    m = _tiny()
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        y = m(x)
        state = m.allocate_state(2)
        y_pre = m(x[:, :9], state)
        y_mid = m(x[:, 9:12], state)
        y_steps = torch.stack([m.step(x[:, t], state) for t in range(12, 21)], dim=1)
    torch.testing.assert_close(torch.cat([y_pre, y_mid, y_steps], 1), y, rtol=1e-5, atol=1e-5)


def test_state_allocation_and_selection() -> None:
    m = _tiny()
    state = m.allocate_state(3, dtype=torch.float16)
    assert state.conv.shape == (3, 32 * 2 + 2 * 2 * 16, 4) and state.conv.dtype == torch.float16
    assert state.ssm.shape == (3, 8, 8, 16) and state.ssm.dtype == torch.float32
    assert state.batch_size == 3
    state.ssm.normal_()
    picked = state.select(torch.tensor([2, 0]))
    assert isinstance(picked, Mamba2State) and picked.batch_size == 2
    assert torch.equal(picked.ssm[0], state.ssm[2])
    assert torch.count_nonzero(state.zero_().ssm) == 0


def test_backward_reaches_every_parameter() -> None:
    m = _tiny()
    m(torch.randn(2, 10, 32)).square().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter allows triton on CPU")
def test_forcing_triton_on_cpu_is_a_clear_error() -> None:
    with pytest.raises(Exception, match="use impl 'torch'"):
        resolve_impl("triton", "cpu")
    assert resolve_impl("auto", "cpu") == "torch"
    with pytest.raises(Exception, match="unknown kernel impl"):
        resolve_impl("cuda", "cpu")


def _saved_bytes(fn):
    """Bytes of the distinct storages autograd keeps for backward while ``fn`` runs."""
    seen = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def test_gated_norm_recomputes_instead_of_saving_fp32_intermediates():
    from avgkit_mamba.norm import GatedRMSNorm

    torch.manual_seed(0)
    norm = GatedRMSNorm(64, group_size=32)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 16, 64, dtype=torch.bfloat16, requires_grad=True)
    z = torch.randn(2, 16, 64, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(2, 16, 64)
    (y, saved) = _saved_bytes(lambda: norm(x, z))
    (y_plain, saved_plain) = _saved_bytes(lambda: norm._norm(x, z))
    inputs = x.numel() * x.element_size() + z.numel() * z.element_size() + norm.weight.numel() * 4
    assert saved <= inputs < saved_plain  # only the inputs are kept
    grads = torch.autograd.grad((y.float() * g).sum(), (x, z, norm.weight))
    grads_plain = torch.autograd.grad((y_plain.float() * g).sum(), (x, z, norm.weight))
    assert torch.equal(y, y_plain)
    for a, b in zip(grads, grads_plain, strict=True):
        assert torch.equal(a, b)
