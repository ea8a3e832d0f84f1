"""With a fixed decode width, an image's tokens do not depend on the batch it was asked in.

On the CPU this holds for any batch; on a GPU the matrix kernels round differently per
batch shape, which ``decode_width`` removes by always decoding groups of one size.
"""

from __future__ import annotations

import pytest
import torch

from avgkit.build import build
from avgkit.recipe import validate_recipe
from avgkit.sample.ar import ARSampler, ARSamplerConfig

RECIPE = {"name": "t", "tokenizer": "toy-patch", "backbone": "mamba2:tiny",
          "conditioner": {"name": "adaln-group", "groups": 2, "num_classes": 10}}
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fixed_decode_width_gives_the_same_image_in_any_batch(device, dtype):
    torch.manual_seed(0)
    c = build(validate_recipe(RECIPE))
    c.backbone.to(device=device, dtype=dtype).eval()
    c.conditioner.to(device=device, dtype=dtype).eval()
    labels = torch.arange(13, device=device) % 10
    sampler = ARSampler(ARSamplerConfig(cfg_scale=2.0, top_k=8, decode_width=8))
    whole = sampler.sample(c.backbone, c.conditioner, labels, seed=7, dtype=dtype)
    for size in (1, 5, 8):
        parts = [sampler.sample(c.backbone, c.conditioner, labels[i : i + size], seed=7, dtype=dtype,
                                index=torch.arange(i, min(i + size, 13), device=device))
                 for i in range(0, 13, size)]
        assert torch.equal(torch.cat(parts), whole), f"calls of {size} images changed some tokens"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("path", "state_dtype"),
                         [("eager", "bf16"), ("graph", "bf16"), ("compiled", "bf16"), ("graph", "int8")])
def test_aim_b_samples_are_reproducible_on_the_gpu(path, state_dtype):
    """AiM-B at full size (random weights; the bf16 state, and the one-byte state on the graph path) with the
    paper's settings: CFG 2, top-k 600, top-p 0.98. The same image on a repeated call and in calls of another
    size, per code path."""
    from avgkit.plugins import get_registry
    from avgkit.testing.reproducibility import assert_reproducible

    reg = get_registry()
    spec, cspec = reg.get("backbone", "mamba2"), reg.get("conditioner", "adaln")
    torch.manual_seed(0)
    backbone = spec.factory(spec.resolve("aim-b", {"vocab_size": 16384, "num_tokens": 256, "state_dtype": state_dtype}))
    cond = cspec.factory(cspec.resolve(None, {"num_classes": 1000}), dim=backbone.dim, num_layers=backbone.num_layers)
    with torch.no_grad():  # a trained model's modulation is not zero
        for p in cond.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.02)
    backbone, cond = backbone.cuda().bfloat16().eval(), cond.cuda().bfloat16().eval()
    assert_reproducible(backbone, cond, path=path)
