"""The text conditioner: tokenizers, prefix and null condition, dropout, padding, pretrained encoders."""

from __future__ import annotations

import pytest
import torch
from avgkit_text.conditioner import TextConditioner, word_id, words_of
from avgkit_text.config import TextConditionerConfig

from avgkit.conditions import Conditions
from avgkit.errors import AvgkitError
from avgkit.plugins import get_registry


def _text(**options):
    torch.manual_seed(0)
    return TextConditioner(TextConditionerConfig(**options), dim=32, num_layers=2).eval()


def _mamba(num_tokens=8):
    spec = get_registry().get("backbone", "mamba2")
    torch.manual_seed(1)
    return spec.factory(spec.resolve("tiny", {"vocab_size": 16, "num_tokens": num_tokens, "d_model": 32,
                                              "headdim": 16})).eval()


def test_registered():
    spec = get_registry().get("conditioner", "text")
    cond = spec.factory(spec.resolve("words", {}), dim=32, num_layers=2)
    assert isinstance(cond, TextConditioner) and cond.condition_kinds == ("tokens", "embeddings")


def test_words_split_and_hash():
    assert words_of("Forty-two!") == ["forty", "two"]
    assert word_id("two", 2048) == word_id("two", 2048) != word_id("three", 2048)
    batch = _text().tokenize(["forty-two", "seven"])
    assert batch.kind == "tokens" and batch.values.shape == (2, 2)
    assert batch.mask.tolist() == [[True, True], [True, False]]
    assert _text(encoder="bytes").tokenize(["ab"]).values.tolist() == [[98, 99]]


def test_prefix_mask_null_and_modulation():
    cond = _text()
    out = cond(cond.tokenize(["forty-two", "seven"]))
    assert out.prefix.shape == (2, 3, 32) and out.layers.shape == (2, 2, 3, 32) and out.final.shape == (2, 2, 32)
    assert out.prefix_mask.tolist() == [[True, True, True], [True, False, True]]
    null = cond.null(2)
    assert null.prefix_mask.tolist() == [[False, True], [False, True]]
    assert torch.allclose(null.prefix[0, -1], cond.null_embedding)
    dropped = cond.drop_conditions(cond.tokenize(["a", "b"]).with_null(torch.tensor([True, False])))
    assert dropped.null.tolist()[0] is True


def test_condition_dropout_rate():
    cond = _text(label_dropout=0.25)
    batch = cond.tokenize(["seven"] * 4000)
    dropped = cond.drop_conditions(batch, torch.Generator().manual_seed(0))
    assert 0.22 < dropped.null.float().mean() < 0.28


def test_class_labels_are_refused():
    with pytest.raises(AvgkitError, match="takes captions"):
        _text()(torch.tensor([1, 2]))


def test_caption_logits_ignore_batch_padding():
    """A caption's logits are the same alone and padded in a batch beside a longer caption."""
    cond, backbone = _text(), _mamba()
    codes = torch.randint(0, 16, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        both = backbone(codes, cond(cond.tokenize(["seven", "forty two three one"])))
        alone = backbone(codes[:1], cond(cond.tokenize(["seven"])))
    assert torch.allclose(both[:1], alone, atol=1e-5)


def test_sampler_with_captions_and_cfg():
    from avgkit.sample.ar import ARSampler, ARSamplerConfig

    cond, backbone = _text(), _mamba()
    sampler = ARSampler(ARSamplerConfig(cfg_scale=3.0, decode_width=2))
    batch = cond.tokenize(["seven", "forty two", "one"])
    a = sampler.sample(backbone, cond, batch, seed=1)
    b = sampler.sample(backbone, cond, batch[torch.tensor([2])], seed=1, index=torch.tensor([2]))
    assert a.shape == (3, 8) and torch.equal(a[2:], b)


# ----------------------------------------------------------------------------- pretrained
def _save_word_tokenizer(folder, words):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                                eos_token="</s>")
    fast.save_pretrained(folder)
    return len(vocab)


@pytest.mark.parametrize("kind", ["t5", "clip"])
def test_frozen_pretrained_encoder(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    vocab = _save_word_tokenizer(tmp_path, ["forty", "two", "seven"])
    torch.manual_seed(0)
    if kind == "t5":
        model = transformers.T5EncoderModel(transformers.T5Config(vocab_size=vocab, d_model=16, d_kv=8, d_ff=32,
                                                                  num_layers=1, num_heads=2))
    else:
        model = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, pad_token_id=0, bos_token_id=2, eos_token_id=2))
    model.save_pretrained(tmp_path)
    cond = _text(encoder=kind, path=str(tmp_path))
    assert not any(k.startswith("_pretrained") for k in cond.state_dict())  # the frozen encoder stays out
    batch = cond.tokenize(["forty two", "seven"])
    feats = cond.features(batch.values, batch.mask)
    assert feats.shape == (2, 2, 16)
    from_tokens = cond(batch)
    from_features = cond(Conditions.embeddings(feats, batch.mask))
    assert torch.allclose(from_tokens.prefix, from_features.prefix, atol=1e-6)
    assert cond.null(2).prefix.shape == (2, 2, 32)
    with pytest.raises(AvgkitError, match="no config.json"):
        _text(encoder=kind, path=str(tmp_path / "missing"))


def test_training_loop_on_captions():
    """The generic loop trains on caption ids through a caption table, with condition dropout."""
    from avgkit.build import ARModel
    from avgkit.data.captions import CaptionTable
    from avgkit.recipe import TrainSection
    from avgkit.train.data import StepBatches, TensorCodes
    from avgkit.train.loop import Trainer

    cond, backbone = _text(label_dropout=0.5), _mamba()
    codes = torch.randint(0, 16, (32, 8), generator=torch.Generator().manual_seed(0))
    ids = torch.arange(32) % 3
    cfg = TrainSection(steps=3, batch_size=8, lr=1e-3, precision="fp32", log_every=1, ckpt_every=100)
    batches = StepBatches(TensorCodes(codes, ids), batch_size=8, grad_accum=1, rank=0, world_size=1, seed=0)
    before = cond.pool.weight.detach().clone()
    trainer = Trainer(ARModel(backbone, cond), batches, cfg, progress=False,
                      conditions=CaptionTable(["forty-two", "seven", "ninety"], cond))
    result = trainer.fit()
    assert result.step == 3 and not torch.equal(before, cond.pool.weight)
