"""adaLN family: forms, exact conversions between them, official key layout."""

import pytest
import torch
from avgkit_adaln.convert import convert_aim, to_aim

from avgkit.plugins import get_registry


def make(name, dim=16, layers=6, **opts):
    spec = get_registry().get("conditioner", name)
    torch.manual_seed(0)
    cond = spec.factory(spec.resolve(None, {"num_classes": 10, **opts}), dim=dim, num_layers=layers)
    with torch.no_grad():
        for p in cond.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # leave the zero init behind
    return cond.eval()


def test_group_set_i_mod_g_plus_table():
    cond = make("adaln-group", groups=4)
    labels = torch.tensor([1, 7])
    c = cond(labels)
    emb = cond.cls_embed(labels)
    sets = cond.adaln_group(emb).view(2, 4, 3, 16)
    for i in range(6):
        torch.testing.assert_close(c.layers[i], sets[:, i % 4] + cond.scale_shift_table[i])
        m = c.modulation(i)
        torch.testing.assert_close(m.gate, c.layers[i][:, 2])
    assert c.final.shape == (2, 2, 16) and c.prefix.shape == (2, 1, 16)


@pytest.mark.parametrize("name,opts", [("adaln-group", {"groups": 4}), ("adaln-group", {"groups": 6}), ("adaln-single", {})])
def test_group_and_single_expand_exactly_into_per_layer(name, opts):
    cond = make(name, **opts)
    per_layer = cond.to_per_layer()
    assert type(per_layer).__name__ == "AdaLNConditioner"
    labels = torch.arange(10)
    a, b = cond(labels), per_layer(labels)
    torch.testing.assert_close(a.layers, b.layers, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.final, b.final)
    torch.testing.assert_close(a.prefix, b.prefix)


def test_single_is_group_of_one():
    single = make("adaln-single")
    assert single.groups == 1
    c = single(torch.tensor([3]))
    torch.testing.assert_close(c.layers[0] - single.scale_shift_table[0], c.layers[5] - single.scale_shift_table[5])


def test_class_token_has_no_modulation():
    c = make("class-token")(torch.tensor([0, 1]))
    assert c.layers is None and c.final is None and c.modulation(0) is None


def test_per_layer_is_zero_initialised():
    spec = get_registry().get("conditioner", "adaln")
    cond = spec.factory(spec.resolve(None, {"num_classes": 10}), dim=8, num_layers=2)
    c = cond(torch.tensor([1]))
    assert c.layers.abs().max() == 0 and c.final.abs().max() == 0


def test_label_dropout_rate_and_null_row():
    cond = make("adaln-group", label_dropout=0.1)
    g = torch.Generator().manual_seed(0)
    dropped = cond.drop_labels(torch.zeros(20000, dtype=torch.long), g)
    assert abs((dropped == 10).float().mean().item() - 0.1) < 0.01
    assert cond.cls_embed.embedding_table.weight.shape[0] == 11
    torch.testing.assert_close(cond.null(2).prefix[:, 0], cond.cls_embed.embedding_table.weight[[10, 10]])


@pytest.mark.parametrize("name,opts", [("adaln", {}), ("adaln-group", {"groups": 4}), ("class-token", {})])
def test_official_layout_round_trip(name, opts):
    cond = make(name, **opts)
    official = to_aim(cond.state_dict(), name, 6)
    if name == "adaln-group":
        assert official["mamba.backbone.layers.3.scale_shift_table"].shape == (1, 3, 16)
        assert official["mamba.backbone.adaln_group.1.weight"].shape == (4 * 3 * 16, 16)
    conv = convert_aim(official, name, 6)
    assert conv.consumed == set(official)
    fresh = make(name, **opts)
    fresh.load_state_dict(conv.state_dict, strict=True)
    labels = torch.arange(10)
    a, b = cond(labels), fresh(labels)
    torch.testing.assert_close(a.prefix, b.prefix)
    if a.layers is not None:
        torch.testing.assert_close(a.layers, b.layers)


def test_llamagen_class_table_goes_to_class_token():
    from avgkit.plugins import get_manager

    table = torch.randn(11, 16)
    conv = get_manager().convert("llamagen-gpt", {"cls_embedding.embedding_table.weight": table, "tok_embeddings.weight": 0},
                                 "conditioner", "class-token", None, 6)
    assert conv.consumed == {"cls_embedding.embedding_table.weight"}
    cond = make("class-token")
    cond.load_state_dict(conv.state_dict)
    torch.testing.assert_close(cond(torch.tensor([10])).prefix[0, 0], table[10])
