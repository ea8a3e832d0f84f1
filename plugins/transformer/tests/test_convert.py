"""Converting LlamaGen c2i GPT checkpoints (source "llamagen-gpt")."""

from __future__ import annotations

import avgkit_transformer.plugin as plugin
import pytest
import torch
from avgkit_transformer import TransformerBackbone, TransformerConfig
from avgkit_transformer.convert import convert_llamagen_gpt
from avgkit_transformer.errors import TransformerError

from avgkit.convert import load_external_state_dict
from avgkit.plugins import PluginManager

DIM, LAYERS, HEADS, HIDDEN, VOCAB, TOKENS = 32, 2, 4, 96, 20, 16


def _config(**extra) -> TransformerConfig:
    return TransformerConfig(dim=DIM, layers=LAYERS, heads=HEADS, multiple_of=32, vocab_size=VOCAB,
                             num_tokens=TOKENS, **extra)


def official_layout(layers: int = LAYERS, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict named and shaped as LlamaGen's GPT (c2i, cls_token_num 1) saves it."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    sd = {"cls_embedding.embedding_table.weight": r(11, DIM), "tok_embeddings.weight": r(VOCAB, DIM)}
    for i in range(layers):
        sd[f"layers.{i}.attention.wqkv.weight"] = r(3 * DIM, DIM)
        sd[f"layers.{i}.attention.wo.weight"] = r(DIM, DIM)
        sd[f"layers.{i}.feed_forward.w1.weight"] = r(HIDDEN, DIM)
        sd[f"layers.{i}.feed_forward.w3.weight"] = r(HIDDEN, DIM)
        sd[f"layers.{i}.feed_forward.w2.weight"] = r(DIM, HIDDEN)
        sd[f"layers.{i}.attention_norm.weight"] = r(DIM)
        sd[f"layers.{i}.ffn_norm.weight"] = r(DIM)
    sd["norm.weight"] = r(DIM)
    sd["output.weight"] = r(VOCAB, DIM)
    return sd


def _as_loaded(sd: dict, tmp_path) -> dict:
    """What the core hands over: an official-style ``{"model": ...}`` .pt read by its safe loader."""
    path = tmp_path / "c2i_tiny.pt"
    torch.save({"model": sd}, path)
    return load_external_state_dict(path)


def test_maps_every_key_and_loads_strictly(tmp_path):
    sd = official_layout()
    out, consumed = convert_llamagen_gpt(_as_loaded(sd, tmp_path), _config())
    assert consumed == set(sd) - {"cls_embedding.embedding_table.weight"}  # the class table is the conditioner's
    model = TransformerBackbone(_config())
    model.load_state_dict(out, strict=True)
    assert torch.equal(model.blocks[1].ffn.gate.weight, sd["layers.1.feed_forward.w1.weight"])
    assert torch.equal(model.blocks[1].ffn.up.weight, sd["layers.1.feed_forward.w3.weight"])
    assert torch.equal(model.blocks[0].ffn.down.weight, sd["layers.0.feed_forward.w2.weight"])
    assert torch.equal(model.blocks[0].attn.qkv.weight, sd["layers.0.attention.wqkv.weight"])
    assert torch.equal(model.blocks[1].attn.proj.weight, sd["layers.1.attention.wo.weight"])
    assert torch.equal(model.blocks[1].attn_norm.weight, sd["layers.1.attention_norm.weight"])
    assert torch.equal(model.norm_f.weight, sd["norm.weight"])
    assert torch.equal(model.head.weight, sd["output.weight"])
    assert torch.equal(model.tok_embed.weight, sd["tok_embeddings.weight"])


def test_strips_wrappers_and_consumes_derived_tables():
    sd = {f"module._orig_mod.{k}": v for k, v in official_layout().items()}
    sd["module.freqs_cis"] = torch.zeros(TOKENS + 1, DIM // HEADS // 2, 2)
    sd["unrelated.weight"] = torch.zeros(3)
    out, consumed = convert_llamagen_gpt({"model": sd}, _config())
    assert "head.weight" in out and not any(k.startswith("cls") for k in out)
    assert "module.freqs_cis" in consumed and "module._orig_mod.norm.weight" in consumed
    # left for the conditioner's plugin, or for the core to report as unknown
    assert "unrelated.weight" not in consumed
    assert "module._orig_mod.cls_embedding.embedding_table.weight" not in consumed


def test_extra_layers_are_named():
    sd = official_layout(layers=3)  # one layer more than the config
    with pytest.raises(TransformerError, match=r"more than 2 layers \(layers\.2\..*larger preset"):
        convert_llamagen_gpt(sd, _config())


def test_missing_keys_are_named():
    sd = official_layout()
    del sd["layers.1.ffn_norm.weight"], sd["norm.weight"]
    with pytest.raises(TransformerError, match=r"lacks layers\.1\.ffn_norm\.weight, norm\.weight"):
        convert_llamagen_gpt(sd, _config())


def test_misshaped_keys_are_named():
    sd = official_layout()
    sd["layers.0.feed_forward.w1.weight"] = torch.zeros(HIDDEN + 32, DIM)
    with pytest.raises(TransformerError, match=r"layers\.0\.feed_forward\.w1\.weight \(128, 32\) \(expected \(96, 32\)\)"):
        convert_llamagen_gpt(sd, _config())


def test_tied_head_needs_tied_checkpoint():
    with pytest.raises(TransformerError, match="untied output head"):
        convert_llamagen_gpt({"model": official_layout()}, _config(tie_head=True))


def test_hook_answers_only_for_its_backbone(tmp_path):
    pm = PluginManager(entry_points=False, extra=[("transformer-under-test", plugin)])
    sd = _as_loaded(official_layout(), tmp_path)
    out = pm.convert("llamagen-gpt", sd, "backbone", "transformer", _config(), 2)
    assert out is not None and set(out.state_dict) == set(TransformerBackbone(_config()).state_dict())
    assert pm.convert("llamagen-gpt", sd, "conditioner", "class-token", None, 2) is None
    assert pm.convert("aim", sd, "backbone", "transformer", _config(), 2) is None
    assert "llamagen-gpt" in pm.checkpoint_formats()
