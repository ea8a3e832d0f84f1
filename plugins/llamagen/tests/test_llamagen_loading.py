"""Weights files: official layout round trips, safe unpickling, strict and readable key checks."""

from __future__ import annotations

import argparse
import os

import pytest
import safetensors.torch
import torch
from avgkit_llamagen.errors import VQError
from avgkit_llamagen.loading import (
    convert_state_dict,
    load_tokenizer,
    load_weights,
    read_config,
    read_state_dict,
    save_weights,
)
from avgkit_llamagen.presets import build_tokenizer
from avgkit_llamagen.vq_model import LlamaGenVQ
from llamagen_testutil import smooth_images, vq16_like_config


def random_official_state(cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with LlamaGen's key names and shapes for ``cfg``."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaGenVQ(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()}
    state["quantize.codebook_used"] = torch.randint(0, cfg.codebook_size, (65536,), generator=g).float()
    return state


@pytest.fixture(scope="module")
def cfg():
    return vq16_like_config()


@pytest.fixture(scope="module")
def official(cfg):
    return random_official_state(cfg)


def assert_same_weights(model: LlamaGenVQ, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert set(own) == set(state)
    assert all(torch.equal(own[k], state[k]) for k in state)


def test_llamagen_pt_checkpoint_loads(tmp_path, cfg, official):
    path = tmp_path / "vq_ds16_c2i.pt"
    torch.save({"model": official}, path)  # the released file's layout
    model = load_weights(LlamaGenVQ(cfg), path)
    assert_same_weights(model, official)
    x = smooth_images(2, 32, channels=3)
    reference = LlamaGenVQ(cfg)
    reference.load_state_dict(official)
    assert torch.equal(model.eval().encode(x), reference.eval().encode(x))


def test_plain_state_dict_and_safetensors_round_trip(tmp_path, cfg, official):
    torch.save(official, tmp_path / "plain.pth")
    assert_same_weights(load_weights(LlamaGenVQ(cfg), tmp_path / "plain.pth"), official)
    safetensors.torch.save_file(official, str(tmp_path / "w.safetensors"))
    assert_same_weights(load_weights(LlamaGenVQ(cfg), tmp_path / "w.safetensors"), official)
    # a safetensors file is recognised by its content, whatever its name
    os.replace(tmp_path / "w.safetensors", tmp_path / "w.bin")
    assert_same_weights(load_weights(LlamaGenVQ(cfg), tmp_path / "w.bin"), official)


def test_save_weights_records_the_architecture(tmp_path, cfg, official):
    model = LlamaGenVQ(cfg)
    model.load_state_dict(official)
    path = save_weights(model, tmp_path / "tok.safetensors")
    assert read_config(path).architecture() == cfg.architecture()
    loaded = load_tokenizer(path)
    assert_same_weights(loaded, official)
    assert not loaded.training
    assert (
        build_tokenizer(cfg.model_copy(update={"weights": str(path)}))
        .state_dict()["quant_conv.bias"]
        .equal(official["quant_conv.bias"])
    )
    torch.save({"model": official}, tmp_path / "x.pt")
    with pytest.raises(VQError, match="does not record its architecture; pass a VQConfig"):
        load_tokenizer(tmp_path / "x.pt")
    assert_same_weights(load_tokenizer(tmp_path / "x.pt", cfg), official)


def test_wrapped_checkpoints_are_unwrapped(tmp_path, cfg, official):
    aim_like = {f"vqvae.{k}": v for k, v in official.items()}
    aim_like["mamba.backbone.norm_f.weight"] = torch.ones(4)
    torch.save(aim_like, tmp_path / "aim.pt")
    assert_same_weights(load_weights(LlamaGenVQ(cfg), tmp_path / "aim.pt"), official)
    converted = convert_state_dict(aim_like, cfg)
    assert converted is not None and set(converted) == set(official)
    assert convert_state_dict({"mamba.x": torch.ones(1)}, cfg) is None
    # a training checkpoint keeps the weights under "model" next to other entries
    torch.save({"model": official, "optimizer": {"state": {}}, "steps": 5}, tmp_path / "train.pt")
    assert_same_weights(load_weights(LlamaGenVQ(cfg), tmp_path / "train.pt"), official)
    torch.save({"ema": official, "steps": 5}, tmp_path / "ema.pt")
    assert_same_weights(load_weights(LlamaGenVQ(cfg), tmp_path / "ema.pt", key="ema"), official)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, cfg, official):
    state = dict(official)
    del state["decoder.conv_out.bias"]
    state["decoder.extra.weight"] = torch.zeros(1)
    state["quant_conv.weight"] = torch.zeros(9, 16, 1, 1)
    safetensors.torch.save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(VQError) as err:
        load_weights(LlamaGenVQ(cfg), tmp_path / "bad.safetensors")
    message = str(err.value)
    assert "\n" not in message
    assert "1 missing key: decoder.conv_out.bias" in message
    assert "1 unexpected key: decoder.extra.weight" in message
    assert "1 mis-shaped key: quant_conv.weight (file (9, 16, 1, 1), model (8, 16, 1, 1))" in message
    assert "pick the preset/config the checkpoint was trained with" in message


def test_key_lists_are_capped(tmp_path, cfg, official):
    state = {k: v for k, v in official.items() if not k.startswith("decoder.")}
    safetensors.torch.save_file(state, str(tmp_path / "enc.safetensors"))
    missing = sum(1 for k in official if k.startswith("decoder."))
    with pytest.raises(
        VQError, match=rf"{missing} missing keys: (decoder\.[^,;]+, ){{4}}decoder\.[^,;]+ and {missing - 5} more"
    ):
        load_weights(LlamaGenVQ(cfg), tmp_path / "enc.safetensors")


def test_wrong_architecture_is_refused(tmp_path, official):
    safetensors.torch.save_file(official, str(tmp_path / "w.safetensors"))
    with pytest.raises(VQError, match="mis-shaped"):
        load_weights(LlamaGenVQ(vq16_like_config(codebook_size=128)), tmp_path / "w.safetensors")


def test_codebook_usage_buffer_may_be_absent(tmp_path, cfg, official):
    state = {k: v for k, v in official.items() if k != "quantize.codebook_used"}
    safetensors.torch.save_file(state, str(tmp_path / "w.safetensors"))
    model = load_weights(LlamaGenVQ(cfg), tmp_path / "w.safetensors")
    assert torch.equal(model.quant_conv.weight, official["quant_conv.weight"])


class _Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickles_with_objects_are_refused_without_running_code(tmp_path, official):
    marker = tmp_path / "pwned"
    torch.save({"model": official, "payload": _Exploit(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(VQError, match=r"refusing to load .*evil.pt.*\(io.open\).*could run code"):
        read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()
    # LlamaGen's own training checkpoints store argparse "args": refused the same way
    torch.save({"model": official, "args": argparse.Namespace(lr=1.0)}, tmp_path / "args.pt")
    with pytest.raises(VQError, match=r"\(argparse.Namespace\).*re-save only its state dict"):
        read_state_dict(tmp_path / "args.pt")


def test_unreadable_inputs(tmp_path):
    with pytest.raises(VQError, match="not found"):
        read_state_dict(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(VQError, match="cannot read"):
        read_state_dict(tmp_path / "junk.pt")
    torch.save({"weights": {"a": torch.ones(1)}, "step": 3}, tmp_path / "nested.pt")
    with pytest.raises(VQError, match="pass key=... naming the entry"):
        read_state_dict(tmp_path / "nested.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(VQError, match="holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pt")


def test_truncated_safetensors_is_named_not_a_traceback(tmp_path, cfg, official):
    model = LlamaGenVQ(cfg)
    model.load_state_dict(official)
    path = save_weights(model, tmp_path / "tok.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VQError, match="damaged or truncated"):
        read_state_dict(path)
    path.write_bytes(data[:5000] if len(data) > 5000 else data[:20])
    with pytest.raises(VQError, match="damaged or truncated"):
        load_tokenizer(path)
