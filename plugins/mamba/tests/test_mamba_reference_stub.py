"""The mamba-ssm reference stack keeps up with the block's calls, without mamba-ssm installed.

``reference_backbone`` swaps every mixer for a ``ReferenceMixer`` wrapping mamba-ssm's
``Mamba2``. Benchmarks and GPU oracles are its only users, so a drift between the
block's call signature and the wrapper shows only on a GPU machine with mamba-ssm. Here
a stand-in ``mamba_ssm`` package (the same interface, computed by avgkit's own mixer)
lets the wrapper run through prefill and decoding on the CPU.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from avgkit_mamba.mixer import Mamba2Mixer, Mamba2State

from avgkit.build import build
from avgkit.recipe import validate_recipe
from avgkit.sample.ar import ARSampler, ARSamplerConfig


class _StubMamba2(Mamba2Mixer):
    """mamba-ssm's ``Mamba2`` constructor and ``forward``/``step`` signatures, avgkit's math."""

    def __init__(self, d_model, *, use_mem_eff_path=False, layer_idx=None, **kwargs):
        super().__init__(d_model, impl="torch", **kwargs)
        self.layer_idx = layer_idx

    def forward(self, x, inference_params=None):
        if inference_params is None:
            return super().forward(x)
        conv, ssm = inference_params.key_value_memory_dict[self.layer_idx]
        return super().forward(x, state=Mamba2State(conv, ssm))

    def step(self, hidden_states, conv_state, ssm_state):
        assert hidden_states.dim() == 3 and hidden_states.shape[1] == 1, "mamba-ssm steps take (B, 1, D)"
        out = super().step(hidden_states[:, 0], Mamba2State(conv_state, ssm_state))
        return out[:, None], conv_state, ssm_state


class _InferenceParams:
    def __init__(self, max_seqlen, max_batch_size):
        self.max_seqlen, self.max_batch_size = max_seqlen, max_batch_size
        self.key_value_memory_dict: dict = {}


@pytest.fixture
def stub_mamba_ssm(monkeypatch):
    pkg = types.ModuleType("mamba_ssm")
    modules, mamba2 = types.ModuleType("mamba_ssm.modules"), types.ModuleType("mamba_ssm.modules.mamba2")
    utils, generation = types.ModuleType("mamba_ssm.utils"), types.ModuleType("mamba_ssm.utils.generation")
    mamba2.Mamba2 = _StubMamba2
    generation.InferenceParams = _InferenceParams
    for name, mod in {"mamba_ssm": pkg, "mamba_ssm.modules": modules, "mamba_ssm.modules.mamba2": mamba2,
                      "mamba_ssm.utils": utils, "mamba_ssm.utils.generation": generation}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", types.ModuleType("selective_scan_cuda"))


def test_reference_stack_decodes_through_the_sampler_like_avgkit(stub_mamba_ssm):
    from avgkit_mamba.reference import reference_backbone

    torch.manual_seed(0)
    recipe = validate_recipe({"name": "t", "tokenizer": "toy-patch", "backbone": "mamba2:tiny",
                              "conditioner": {"name": "adaln", "num_classes": 10}})
    c = build(recipe)
    backbone, cond = c.backbone.eval(), c.conditioner.eval()
    ref = reference_backbone(backbone).eval()
    labels = torch.arange(4) % 10
    sampler = ARSampler(ARSamplerConfig(cfg_scale=2.0, top_k=8))
    # the same weights and the same math: the same tokens, through prefill and every step
    assert torch.equal(sampler.sample(ref, cond, labels, seed=3), sampler.sample(backbone, cond, labels, seed=3))
