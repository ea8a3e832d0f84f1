"""Every registered component's smallest preset runs: a new plugin is covered on registration."""

import pytest
import torch

from avgkit.build import resolve_config
from avgkit.plugins import get_registry
from avgkit.recipe import ComponentRef

SMALL = ("tiny", "digits", "small")


def _smallest(spec):
    for p in SMALL:
        if p in spec.presets:
            return p
    return None


def _tokenizer():
    reg = get_registry()
    spec = reg.get("tokenizer", "toy-patch")
    return spec.factory(spec.resolve())


@pytest.mark.parametrize("name", get_registry().names("backbone"))
def test_backbone_forward_and_decode(name):
    reg = get_registry()
    spec = reg.get("backbone", name)
    preset = _smallest(spec)
    if preset is None and spec.presets:
        pytest.skip(f"{name} has no CPU-sized preset ({', '.join(spec.presets)})")
    tok = _tokenizer()
    cfg = resolve_config(reg, "backbone", ComponentRef(name=name, preset=preset),
                         vocab_size=tok.codebook_size, num_tokens=tok.num_tokens)
    torch.manual_seed(0)
    bb = spec.factory(cfg).eval()
    cspec = reg.get("conditioner", "toy-class")
    cond = cspec.factory(cspec.resolve(), dim=bb.dim, num_layers=bb.num_layers).eval()
    codes = torch.randint(0, tok.codebook_size, (2, tok.num_tokens))
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        c = cond(labels)
        logits = bb(codes, c)
        assert logits.shape == (2, tok.num_tokens, tok.codebook_size)
        st = bb.init_state(2)
        first = bb.prefill(st, c)
        torch.testing.assert_close(first, logits[:, 0], atol=1e-4, rtol=1e-4)
        for k in range(3):
            nxt = bb.step(st, codes[:, k], c)
            torch.testing.assert_close(nxt, logits[:, k + 1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", get_registry().names("conditioner"))
def test_conditioner_gives_a_conditioning(name):
    reg = get_registry()
    spec = reg.get("conditioner", name)
    cfg = spec.resolve(_smallest(spec), {"num_classes": 10} if "num_classes" in spec.config.model_fields else {})
    cond = spec.factory(cfg, dim=16, num_layers=3)
    # class conditioners take label ids; a text conditioner its tokenized captions
    c = cond(torch.tensor([0, 9]) if "class" in cond.condition_kinds else cond.tokenize(["forty two", "seven"]))
    assert c.prefix.shape[0] == 2 and c.prefix.shape[-1] == 16
    if c.layers is not None:
        assert c.layers.shape == (3, 2, 3, 16)
    null = cond.null(2)
    if "class" in cond.condition_kinds:
        assert null.prefix.shape == c.prefix.shape
    else:  # captions vary in length; the sampler left-pads prefixes to one length
        assert null.prefix.shape[0] == 2 and null.prefix.shape[-1] == 16


@pytest.mark.parametrize("name", get_registry().names("tokenizer"))
def test_tokenizer_round_trip_shapes(name):
    reg = get_registry()
    spec = reg.get("tokenizer", name)
    preset = _smallest(spec)
    if preset is None and spec.presets:
        pytest.skip(f"{name} has no CPU-sized preset")
    tok = spec.factory(spec.resolve(preset)).eval()
    x = torch.rand(2, tok.channels, tok.image_size, tok.image_size) * 2 - 1
    with torch.no_grad():
        codes = tok.encode(x)
        assert codes.shape == (2, tok.num_tokens) and codes.dtype == torch.long
        assert 0 <= codes.min() and codes.max() < tok.codebook_size
        img = tok.decode(codes)
    assert img.shape == x.shape


def test_ls_options_shows_choices_and_optional_types():
    from typing import Literal

    from avgkit.recipe_schema import type_name as _type_name

    assert _type_name(Literal["fp32", "bf16"]) == "one of fp32, bf16"
    assert _type_name(int | None) == "int | None" and _type_name(float) == "float"


def test_a_component_that_does_not_subclass_its_role_is_refused():
    import pytest
    from torch import nn

    from avgkit.build import build
    from avgkit.errors import AvgkitError
    from avgkit.plugins import PluginManager
    from avgkit.recipe import validate_recipe
    from avgkit.registry import BackboneConfig

    class NotABackbone(nn.Module):  # has the attributes, lacks the base class
        dim, num_layers, vocab_size, num_tokens = 8, 1, 16, 16

        def __init__(self, config):
            super().__init__()

    pm = PluginManager(entry_points=False)
    pm.registry.register_callback("backbone", "mine")("plain", NotABackbone, config=BackboneConfig)
    recipe = validate_recipe({"name": "t", "tokenizer": "toy-patch", "backbone": "plain",
                              "conditioner": {"name": "toy-class", "num_classes": 10}})
    with pytest.raises(AvgkitError, match=r"backbone 'plain' \(plugin 'mine'\) built a NotABackbone, which does not "
                                          r"subclass avgkit.interfaces.Backbone"):
        build(recipe, device="meta", registry=pm.registry)
