"""A tiny AiM through official-layout files: exact logits after conversion, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from convert_helpers import CONDITIONERS, TOKENIZER, Evil, official_state, tiny_model, tiny_recipe
from safetensors.torch import save_file

import avgkit.api as api
from avgkit.build import build
from avgkit.convert import convert_checkpoint
from avgkit.errors import AvgkitError


def _save(state: dict, path):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("conditioner", list(CONDITIONERS))
@pytest.mark.parametrize("head", [True, False], ids=["with-head", "tied-head-absent"])
def test_converted_tiny_aim_gives_identical_logits(tmp_path, conditioner, head):
    recipe, comps = tiny_model(conditioner)
    src = _save(official_state(comps, conditioner, head=head), tmp_path / "aim.safetensors")
    out = convert_checkpoint(src, "aim", recipe, tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["convert.json", "model.safetensors", "recipe.yaml"]
    info = json.loads((out / "convert.json").read_text())
    assert info["format"] == "aim" and len(info["source_sha256"]) == 64

    gen = api.load(out, device="cpu")
    codes = torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 7, 10])  # 10 is the null class
    comps.backbone.eval(), comps.conditioner.eval()
    with torch.no_grad():
        want = comps.backbone(codes, comps.conditioner(labels))
        got = gen.backbone(codes, gen.conditioner(labels))
    assert torch.equal(got, want)
    # the decoding path agrees too (same sampler settings, same seeds)
    sampler = gen.make_sampler()
    assert torch.equal(gen.sample_codes([3, 4], seed=2), sampler.sample(comps.backbone, comps.conditioner,
                                                                           torch.tensor([3, 4]), seed=2))


def test_pt_files_are_read_and_pickled_objects_refused(tmp_path):
    recipe, comps = tiny_model("adaln")
    state = official_state(comps, "adaln")
    torch.save(state, tmp_path / "plain.pt")
    out = convert_checkpoint(tmp_path / "plain.pt", "aim", recipe, tmp_path / "ckpt")
    assert (out / "model.safetensors").is_file()

    marker = tmp_path / "was-executed"
    torch.save({"model": state, "extra": Evil(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(AvgkitError, match="refusing to load .*evil.pt.*could run code") as err:
        convert_checkpoint(tmp_path / "evil.pt", "aim", recipe, tmp_path / "ckpt2")
    assert not marker.exists() and not (tmp_path / "ckpt2").exists() and "\n" not in str(err.value)
    # bytes that are no checkpoint at all are called damaged, not unsafe
    (tmp_path / "junk.pt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(AvgkitError, match="cannot read .*junk.pt.*damaged, or another format") as err:
        convert_checkpoint(tmp_path / "junk.pt", "aim", recipe, tmp_path / "ckpt3")
    assert "\n" not in str(err.value)


def _error(tmp_path, state, recipe, name="bad") -> str:
    src = _save(state, tmp_path / f"{name}.safetensors")
    with pytest.raises(AvgkitError) as err:
        convert_checkpoint(src, "aim", recipe, tmp_path / f"{name}-out")
    assert not (tmp_path / f"{name}-out").exists()
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_unknown_missing_and_misshaped_keys_are_named(tmp_path):
    recipe, comps = tiny_model("adaln")
    good = official_state(comps, "adaln")

    extra = {**good, "mamba.backbone.extra.weight": torch.zeros(2), "vqvae.encoder.conv_in.weight": torch.zeros(1)}
    msg = _error(tmp_path, extra, recipe, "extra")
    assert "2 unknown key(s) that no component uses: mamba.backbone.extra.weight, vqvae.encoder.conv_in.weight" in msg

    nheads = comps.backbone.layers[0].mixer.D.shape[0]
    shaped = {**good, "mamba.backbone.layers.0.mixer.D": torch.zeros(nheads + 1)}
    msg = _error(tmp_path, shaped, recipe, "shape")
    assert f"mis-shaped key(s): backbone.layers.0.mixer.D (checkpoint ({nheads + 1},) vs model ({nheads},))" in msg

    missing = {k: v for k, v in good.items() if k != "mamba.backbone.layers.1.mixer.D"}
    assert "1 missing key(s): backbone.layers.1.mixer.D" in _error(tmp_path, missing, recipe, "missing")

    no_cond = {k: v for k, v in good.items() if "adaLN_modulation" not in k}
    msg = _error(tmp_path, no_cond, recipe, "nocond")
    assert "conditioner 'adaln'" in msg and "adaLN_modulation" in msg

    head = {**good, "mamba.lm_head.weight": good["mamba.lm_head.weight"] + 1}
    assert "lm_head.weight differs" in _error(tmp_path, head, recipe, "head")

    # the same checkpoint for a bigger model: shapes named, not a traceback
    msg = _error(tmp_path, good, recipe.model_copy(update={"backbone": recipe.backbone.model_copy(
        update={"options": {**recipe.backbone.options, "d_model": 128}})}), "size")
    assert "mis-shaped key(s)" in msg and "word_embeddings" in msg


def test_tokenizer_weights_inside_the_checkpoint_and_beside_it(tmp_path):
    recipe = tiny_recipe("adaln", tokenizer={"name": "fake-vq", **{k: v for k, v in TOKENIZER.items() if k != "name"},
                                             "weights": "nowhere/vq.pt"})
    torch.manual_seed(0)
    comps = build(recipe.model_copy(update={"tokenizer": recipe.tokenizer.model_copy(
        update={"options": {**recipe.tokenizer.options, "weights": None}})}))
    codebook = torch.randn(16, 2)
    official = official_state(comps, "adaln")
    official.update({"vqvae.codebook": codebook, "vqvae.used": torch.ones(3)})
    out = convert_checkpoint(_save(official, tmp_path / "aim.safetensors"), "aim", recipe, tmp_path / "a")
    assert (out / "tokenizer.safetensors").is_file()
    assert "weights: null" in (out / "recipe.yaml").read_text() or "weights" not in (out / "recipe.yaml").read_text()
    gen = api.load(out, device="cpu")
    assert torch.equal(gen.tokenizer.codebook, codebook) and torch.equal(gen.tokenizer.used, torch.ones(3))

    # no vqvae.* in the checkpoint: the tokenizer comes from its own file (format fake-vq: under "model.")
    del official["vqvae.codebook"], official["vqvae.used"]
    torch.save({"model.codebook": codebook * 2, "model.used": torch.zeros(3)}, tmp_path / "vq.pt")
    out = convert_checkpoint(_save(official, tmp_path / "aim2.safetensors"), "aim", recipe, tmp_path / "b",
                             tokenizer_weights=tmp_path / "vq.pt")
    assert torch.equal(api.load(out, device="cpu").tokenizer.codebook, codebook * 2)

    # the tokenizer file alone
    out = convert_checkpoint(tmp_path / "vq.pt", "fake-vq", recipe, tmp_path / "c")
    assert sorted(p.name for p in out.iterdir()) == ["convert.json", "recipe.yaml", "tokenizer.safetensors"]
    with pytest.raises(AvgkitError, match="tokenizer weights only"):
        api.load(out, device="cpu")
