"""The sampler's draw: one Triton kernel against the PyTorch ops, and who chooses between them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avgkit.errors import AvgkitError
from avgkit.sample.ar import ARSampler, ARSamplerConfig
from avgkit.sample.filtering import draw_tokens

HERE = Path(__file__).resolve().parent


def test_the_triton_draw_under_the_interpreter_picks_as_the_inverse_cdf():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(HERE / "draw_interpret_checks.py")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")


def test_draw_impl_is_checked_where_it_is_chosen():
    logits, u, k = torch.randn(4, 16), torch.rand(2, 3, dtype=torch.float64), torch.tensor([1])
    codes = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(AvgkitError, match="draw_impl triton draws on a CUDA device"):
        draw_tokens(logits, u, k, codes, cfg_scale=2.0, impl="triton")
    with pytest.raises(AvgkitError, match="unknown draw_impl 'fast'"):
        draw_tokens(logits, u, k, codes, cfg_scale=2.0, impl="fast")  # type: ignore[arg-type]
    draw_tokens(logits, u, k, codes, cfg_scale=2.0, impl="auto")  # the CPU: the PyTorch ops
    assert codes[:, 1].ge(0).all() and codes[:, 1].lt(16).all() and codes[:, [0, 2]].eq(0).all()
    with pytest.raises(ValueError, match="draw_impl"):
        ARSamplerConfig(draw_impl="fast")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_triton_draw_samples_the_torch_draws_tokens_on_a_gpu():
    """A sampler with the Triton draw gives (almost) every token of the PyTorch draw's, eager and from the step's
    graph alike, and exactly its own tokens again on a second call."""
    from avgkit.build import build
    from avgkit.recipe import validate_recipe

    torch.manual_seed(0)
    c = build(validate_recipe({"name": "t", "tokenizer": "toy-patch", "backbone": "toy-gru:tiny",
                               "conditioner": {"name": "toy-class"}}))
    backbone, conditioner = c.backbone.cuda().eval(), c.conditioner.cuda().eval()
    labels = torch.arange(16, device="cuda") % 10
    runs = {}
    for impl in ("triton", "torch"):
        for graph in (True, False):
            sampler = ARSampler(ARSamplerConfig(cfg_scale=2.0, cfg_schedule="linear", temperature=0.9, draw_impl=impl,
                                                cuda_graph=graph))
            runs[impl, graph] = sampler.sample(backbone, conditioner, labels, seed=11)
            assert torch.equal(sampler.sample(backbone, conditioner, labels, seed=11), runs[impl, graph])
    assert torch.equal(runs["triton", True], runs["triton", False])
    assert (runs["triton", True] == runs["torch", True]).float().mean() > 0.99
