"""Helpers for the conversion tests: official-layout state dicts and a fake VQ tokenizer plugin."""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from avgkit import hookimpl
from avgkit.build import build
from avgkit.convert import ConvertedWeights
from avgkit.recipe import validate_recipe
from avgkit.testing.toys import ToyPatchConfig, ToyPatchTokenizer


def official_state(comps: Any, conditioner: str, *, head: bool = True) -> dict[str, Tensor]:
    """The model of ``comps`` in the official AiM key layout (``mamba.`` wrapper), via the plugins' inverses."""
    from avgkit_adaln.convert import to_aim as cond_to_aim
    from avgkit_mamba.convert import to_aim as backbone_to_aim

    out = backbone_to_aim(comps.backbone.state_dict())
    out.update(cond_to_aim(comps.conditioner.state_dict(), conditioner, comps.backbone.num_layers))
    head_key = "mamba.lm_head.weight"
    if head:
        out[head_key] = out[head_key].clone()  # its own storage, as a file would hold it
    else:
        del out[head_key]
    return out


def perturb(module: nn.Module, seed: int, scale: float = 0.05) -> None:
    """Move every parameter off its initial value (zero-initialised adaLN would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


# ----------------------------------------------------------------------------- a tiny AiM
TOKENIZER = {"name": "toy-patch", "image_size": 8, "patch": 2, "levels": 16}
CONDITIONERS = {
    "adaln": {"name": "adaln", "num_classes": 10},
    "adaln-group": {"name": "adaln-group", "groups": 2, "num_classes": 10},
}


def tiny_recipe(conditioner: str, tokenizer: dict | None = None):
    return validate_recipe({
        "name": f"tiny-aim-{conditioner}",
        "tokenizer": tokenizer or TOKENIZER,
        # four layers with two groups tell interleaved (i mod G) from blocked group use apart
        "backbone": {"name": "mamba2", "preset": "tiny", "n_layer": 4},
        "conditioner": CONDITIONERS[conditioner],
        "sampler": {"name": "ar", "cfg_scale": 2.5, "top_k": 8},
    })


def tiny_model(conditioner: str, seed: int = 0):
    recipe = tiny_recipe(conditioner)
    torch.manual_seed(seed)
    comps = build(recipe)
    perturb(comps.backbone, seed + 1)
    perturb(comps.conditioner, seed + 2)
    return recipe, comps


# ----------------------------------------------------------------------------- fake VQ tokenizer plugin
class FakeVQConfig(ToyPatchConfig):
    weights: str | None = Field(None, description="weights file (unused by this fake)")


class FakeVQTokenizer(ToyPatchTokenizer):
    """The toy tokenizer plus weights (a codebook and a buffer), to exercise tokenizer conversion."""

    def __init__(self, config: FakeVQConfig) -> None:
        super().__init__(ToyPatchConfig(**config.model_dump(exclude={"weights"})))
        self.codebook = nn.Parameter(torch.zeros(config.levels, 2))
        self.register_buffer("used", torch.zeros(3))


def _own(state: Mapping[str, Tensor], prefix: str) -> ConvertedWeights | None:
    keys = [k for k in state if k.startswith(prefix)]
    if not keys:
        return None
    return ConvertedWeights({k[len(prefix):]: state[k] for k in keys}, set(keys))


def fake_vq_plugin() -> types.ModuleType:
    """A plugin module registering tokenizer ``fake-vq``; it converts ``vqvae.*`` of an AiM
    checkpoint and a ``fake-vq`` file (weights under ``model.``)."""
    mod = types.ModuleType("fake_vq_plugin")
    mod.AVGKIT_API_VERSION = "1.0"

    @hookimpl
    def avgkit_register_tokenizers(register):
        register("fake-vq", FakeVQTokenizer, config=FakeVQConfig)

    @hookimpl
    def avgkit_convert_checkpoint(source, state_dict, role, name):
        if role != "tokenizer" or name != "fake-vq":
            return None
        if source == "aim":
            return _own(state_dict, "vqvae.")
        if source == "fake-vq":
            return _own(state_dict, "model.")
        return None

    @hookimpl
    def avgkit_checkpoint_formats():
        return ["fake-vq"]

    mod.avgkit_register_tokenizers = avgkit_register_tokenizers
    mod.avgkit_convert_checkpoint = avgkit_convert_checkpoint
    mod.avgkit_checkpoint_formats = avgkit_checkpoint_formats
    sys.modules.setdefault(mod.__name__, mod)
    return mod


class Evil:
    """Unpickling this would run a shell command; a safe loader must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))
