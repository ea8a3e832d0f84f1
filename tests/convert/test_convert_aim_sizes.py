"""Every AiM size: the official key layout converts completely, with the right shapes (meta device)."""

from __future__ import annotations

import pytest
from convert_helpers import official_state

from avgkit.build import ARModel, build
from avgkit.convert import building_recipe, convert_state_dict
from avgkit.plugins import get_registry
from avgkit.recipe import load_recipe

# paper Table 1 parameter counts (no tokenizer, tied head counted once)
SIZES = {"aim-b": 147_622_080, "aim-l": 349_760_000, "aim-xl": 763_291_392, "aim-1b": 1_335_944_192}


def _recipe(name: str):
    """The packaged recipe; without the VQ plugin, a parameter-free tokenizer with VQ-16's grid and codebook."""
    overrides = []
    if "llamagen-vq" not in get_registry().names("tokenizer"):
        overrides = ["tokenizer={name: toy-patch, image_size: 256, patch: 16, levels: 16384}"]
    return load_recipe(name, overrides)


@pytest.mark.parametrize("name", list(SIZES))
def test_official_layout_converts_every_key_on_meta(name):
    recipe = _recipe(name)
    comps = build(building_recipe(recipe), device="meta")
    d, layers = comps.backbone.dim, comps.backbone.num_layers
    # official safetensors files store the tied head once, under the token table
    official = official_state(comps, recipe.conditioner.name, head=False)
    assert sum(v.numel() for v in official.values()) == SIZES[name]
    root = "mamba.backbone."
    expect = {
        "embeddings.word_embeddings.weight": (16384, d),
        "embeddings.position_embeddings.weight": (257, d),
        "cls_embed.embedding_table.weight": (1001, d),
        f"layers.{layers - 1}.mixer.in_proj.weight": (4 * d + 2 * 128 + 2 * d // 64, d),
        f"layers.{layers - 1}.mixer.conv1d.weight": (2 * d + 2 * 128, 1, 4),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
    }
    if name == "aim-b":
        expect[f"layers.{layers - 1}.adaLN_modulation.1.weight"] = (3 * d, d)
    else:
        expect["adaln_group.1.weight"] = (4 * 3 * d, d)
        expect[f"layers.{layers - 1}.scale_shift_table"] = (1, 3, d)
    assert {k: tuple(official[root + k].shape) for k in expect} == expect

    tokenizer = comps.tokenizer.state_dict()
    if tokenizer:  # the VQ-16 tokenizer is installed: the checkpoint carries it under vqvae.*
        official.update({f"vqvae.{k}": v for k, v in tokenizer.items()})

    result = convert_state_dict(official, "aim", recipe, components=comps)
    model = ARModel(comps.backbone, comps.conditioner).state_dict()
    assert result.consumed == set(official)
    assert {k: tuple(v.shape) for k, v in result.model_state.items()} == {k: tuple(v.shape) for k, v in model.items()}
    assert result.converted_by.items() >= {"backbone": "aim", "conditioner": "aim"}.items()
    if tokenizer:
        assert {k: tuple(v.shape) for k, v in result.tokenizer_state.items()} == \
            {k: tuple(v.shape) for k, v in tokenizer.items()}
    else:
        assert result.tokenizer_state is None
