"""A frozen text encoder's features, extracted once by `avgkit prepare` into the code store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from text_testutil import captioned_folder, invoke_ok, run_cli, tiny_text_recipe
from typer.testing import CliRunner

from avgkit.cli.app import app

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CAPTIONS = ["a dark square", "a light square", "a light square", "stripes", "dark stripes", "a light stripes square"]
WORDS = ["a", "dark", "light", "square", "stripes"]


def _captioned_folder(root):
    return captioned_folder(root, CAPTIONS)


def _encoder(folder, kind, seed=0):
    """A tiny randomly initialised T5 encoder or CLIP text tower and a word tokenizer, saved in ``folder``."""
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                         eos_token="</s>").save_pretrained(folder)
    torch.manual_seed(seed)
    if kind == "t5":
        model = transformers.T5EncoderModel(transformers.T5Config(vocab_size=len(vocab), d_model=16, d_kv=8,
                                                                  d_ff=32, num_layers=1, num_heads=2))
    else:
        model = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, pad_token_id=0, bos_token_id=2, eos_token_id=2))
    model.save_pretrained(folder)
    return folder


def _reference_features(folder, kind, caption):
    """The encoder's own output for one caption, loaded straight with transformers (unpadded)."""
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    cls = transformers.T5EncoderModel if kind == "t5" else transformers.CLIPTextModel
    model = cls.from_pretrained(folder, local_files_only=True).eval()
    ids = tok([caption], return_tensors="pt")
    with torch.no_grad():
        return model(**ids).last_hidden_state[0]


def _recipe(tmp, kind, encoder_dir, name="recipe.yaml", **changes):
    recipe = tiny_text_recipe(tmp, "text-frozen", {"encoder": kind, "path": str(encoder_dir)}, per_class=1)
    for key, value in changes.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) else value
    path = tmp / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def _no_encoder(monkeypatch):
    """Make loading a pretrained encoder fail, as it would where the encoder cannot run."""
    import avgkit_text.pretrained

    def refuse(kind, path):
        raise AssertionError(f"the {kind} encoder at {path} was loaded")

    monkeypatch.setattr(avgkit_text.pretrained, "load_pretrained", refuse)


@pytest.mark.parametrize("kind", ["t5", "clip"])
def test_prepare_stores_the_encoders_features_of_each_caption(tmp_path, kind, monkeypatch):
    from avgkit.data.features import GROUP, CaptionFeatures

    _captioned_folder(tmp_path / "pics")
    enc = _encoder(tmp_path / "enc", kind)
    recipe = _recipe(tmp_path, kind, enc, conditioner={"max_length": 8})
    out = invoke_ok("prepare", str(recipe), "--device", "cpu").output
    assert f"text features: 5 captions, {kind} at {enc.resolve()}" in out
    found = CaptionFeatures.open(tmp_path / "codes.zarr")
    captions = sorted(set(CAPTIONS))
    assert len(found) == len(captions) and found.meta["complete"]
    identity = found.encoder
    assert identity["kind"] == kind and identity["path"] == str(enc.resolve()) and identity["max_length"] == 8
    assert identity["dtype"] == "float32" and identity["sha256"].startswith("sha256:")
    assert "model.safetensors" in identity["files"] and "tokenizer.json" in identity["files"]
    values, mask = found.read_all()
    assert values.dtype == torch.float32 and values.shape[1:] == (found.length, 16)
    for i, caption in enumerate(captions):
        want = _reference_features(enc, kind, caption)
        n = len(want)
        assert mask[i].tolist() == [True] * n + [False] * (found.length - n), caption
        assert torch.allclose(values[i, :n], want, atol=1e-5), caption
        assert not values[i, n:].any()
    # a second prepare finds them finished and does not load the encoder
    _no_encoder(monkeypatch)
    invoke_ok("prepare", str(recipe), "--device", "cpu")
    assert (tmp_path / "codes.zarr" / GROUP).is_dir()


def test_training_reads_the_stored_features_and_never_runs_the_encoder(tmp_path, monkeypatch):
    import avgkit_text.pretrained

    from avgkit.data.features import CaptionFeatures

    _captioned_folder(tmp_path / "pics")
    enc = _encoder(tmp_path / "enc", "t5")
    recipe = _recipe(tmp_path, "t5", enc, conditioner={"feature_dtype": "float16"})
    invoke_ok("prepare", str(recipe), "--device", "cpu")
    found = CaptionFeatures.open(tmp_path / "codes.zarr")
    assert found.values.dtype == np.float16 and found.encoder["dtype"] == "float16"
    real = avgkit_text.pretrained.load_pretrained
    _no_encoder(monkeypatch)
    torch.set_num_threads(1)
    invoke_ok("train", str(recipe))  # steps, periodic grids and the final samples: the stored features only
    run = tmp_path / "run"
    assert json.loads((run / "captions.json").read_text())["captions"] == sorted(set(CAPTIONS))
    assert json.loads((run / "eval.json").read_text())["samples"] == 3  # eval.grid_classes captions, one each
    assert (run / "checkpoints" / "step-000002").is_dir()
    # new prompts are new text: sampling them runs the encoder
    refused = CliRunner().invoke(app, ["sample", str(run), "--prompt", "dark square", "--device", "cpu", "--quiet",
                                       "--out", str(tmp_path / "refused")])
    assert refused.exit_code != 0 and "was loaded" in str(refused.exception)
    monkeypatch.setattr(avgkit_text.pretrained, "load_pretrained", real)
    invoke_ok("sample", str(run), "--prompt", "dark square", "--prompt", "stripes", "--per-class", "2", "--device",
            "cpu", "--quiet", "--out", str(tmp_path / "samples"))
    assert np.load(tmp_path / "samples" / "samples.npz")["arr_0"].shape == (4, 8, 8, 3)


def test_features_of_another_encoder_are_refused_until_replaced(tmp_path, capsys):
    from avgkit.data.features import CaptionFeatures

    _captioned_folder(tmp_path / "pics")
    first = _encoder(tmp_path / "enc1", "t5", seed=0)
    other = _encoder(tmp_path / "enc2", "t5", seed=1)  # same shapes, other weights
    invoke_ok("prepare", str(_recipe(tmp_path, "t5", first)), "--device", "cpu")
    before = CaptionFeatures.open(tmp_path / "codes.zarr").read_all()[0]
    changed = _recipe(tmp_path, "t5", other, name="other.yaml")
    capsys.readouterr()  # save_pretrained's progress bars
    for command in ("train", "prepare"):
        code, err = run_cli(capsys, command, str(changed))
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert "holds the features of another text encoder (sha256 differs" in err and str(first.resolve()) in err
        assert "point conditioner.path at the encoder they came from" in err and "--replace-features" in err
    assert not (tmp_path / "run").exists()
    code, err = run_cli(capsys, "train", str(_recipe(tmp_path, "t5", first, name="longer.yaml",
                                                     conditioner={"max_length": 4})))
    assert code == 2 and "(max_length differs" in err, err
    # a moved encoder folder is the same encoder
    moved = first.rename(tmp_path / "moved")
    invoke_ok("prepare", str(_recipe(tmp_path, "t5", moved, name="moved.yaml")), "--device", "cpu")
    found = CaptionFeatures.open(tmp_path / "codes.zarr")
    assert found.encoder["path"] == str(moved.resolve()) and torch.equal(found.read_all()[0], before)
    # --replace-features extracts the recipe's encoder's features instead
    invoke_ok("prepare", str(changed), "--device", "cpu", "--replace-features")
    found = CaptionFeatures.open(tmp_path / "codes.zarr")
    assert found.encoder["path"] == str(other.resolve())
    captions = sorted(set(CAPTIONS))
    want = _reference_features(other, "t5", captions[0])
    assert torch.allclose(found.read_all()[0][0, : len(want)], want, atol=1e-5)
    assert not torch.allclose(found.read_all()[0], before)


def _frozen_conditioner(folder, **options):
    from avgkit_text.conditioner import TextConditioner
    from avgkit_text.config import TextConditionerConfig

    return TextConditioner(TextConditionerConfig(encoder="t5", path=str(folder), **options), dim=32,
                           num_layers=2).eval()


def _code_store(path, captions):
    from avgkit.data.store import CodeStore, StoreMeta

    meta = StoreMeta(tokenizer="toy", vocab_size=16, grid=(2, 2), resolution=8, class_names=list(captions),
                     source={"kind": "captioned-folder"})
    return CodeStore.create(path, meta, 4)


def test_an_interrupted_extraction_resumes_and_a_cut_creation_restarts(tmp_path):
    from avgkit.data.features import GROUP, CaptionFeatures, extract_features, open_features

    captions = sorted(set(CAPTIONS))
    cond = _frozen_conditioner(_encoder(tmp_path / "enc", "t5"))
    identity = cond.frozen_encoder()
    whole = tmp_path / "whole.zarr"
    _code_store(whole, captions)
    report = extract_features(whole, cond, captions, identity, chunk_items=2, durable=False)
    assert (report.encoded, report.resumed, report.restarted) == (5, 0, False)
    want = CaptionFeatures.open(whole).read_all()

    store = tmp_path / "codes.zarr"
    _code_store(store, captions)

    def stop_after_first(chunk):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(store, cond, captions, identity, chunk_items=2, durable=False, on_chunk=stop_after_first)
    with pytest.raises(Exception, match="unfinished; run `avgkit prepare <recipe>` to finish them"):
        open_features(store, identity, captions)
    report = extract_features(store, cond, captions, identity, durable=False)
    assert (report.encoded, report.resumed, report.restarted) == (3, 2, False)
    got = open_features(store, identity, captions).read_all()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    # the group was created but its arrays never were: made again from the start
    import shutil

    shutil.rmtree(store / GROUP / "values")
    report = extract_features(store, cond, captions, identity, chunk_items=4, durable=False)
    assert (report.encoded, report.resumed, report.restarted) == (5, 0, True)
    assert torch.equal(open_features(store, identity, captions).read_all()[0], want[0])
    # a chunk file gone is written again
    (store / GROUP / "values" / "c" / "1" / "0" / "0").unlink()
    report = extract_features(store, cond, captions, identity, durable=False)
    assert (report.encoded, report.resumed) == (1, 4)
    assert torch.equal(open_features(store, identity, captions).read_all()[0], want[0])


def test_caption_tables_from_stored_and_in_memory_features_agree(tmp_path):
    from avgkit.data.captions import CaptionTable
    from avgkit.data.features import extract_features, open_features

    captions = sorted(set(CAPTIONS))
    cond = _frozen_conditioner(_encoder(tmp_path / "enc", "t5"))
    identity = cond.frozen_encoder()
    _code_store(tmp_path / "codes.zarr", captions)
    extract_features(tmp_path / "codes.zarr", cond, captions, identity, chunk_items=2, durable=False)
    found = open_features(tmp_path / "codes.zarr", identity, captions)
    ids = torch.tensor([3, -1, 0, 3, 4])
    stored = CaptionTable(captions, stored=found)(ids)
    held = CaptionTable(captions, features=found.read_all()[0], mask=found.read_all()[1])(ids)
    assert stored.kind == held.kind == "embeddings" and stored.null.tolist() == [False, True, False, False, False]
    assert torch.equal(stored.values, held.values) and torch.equal(stored.mask, held.mask)
    # the features give the conditioner what running the encoder on the captions gives
    tokens = CaptionTable(captions, cond)(ids)
    assert torch.allclose(cond(stored).prefix, cond(tokens).prefix, atol=1e-5)


def test_in_memory_codes_get_features_once_and_trainable_encoders_none(tmp_path, monkeypatch):
    from avgkit.build import build
    from avgkit.data.features import GROUP
    from avgkit.recipe import load_recipe
    from avgkit.runtime.distributed import setup, teardown
    from avgkit.train.pipeline import caption_conditions, load_train_data

    _captioned_folder(tmp_path / "pics")
    enc = _encoder(tmp_path / "enc", "t5")
    recipe = load_recipe(str(_recipe(tmp_path, "t5", enc, data={"store": None})))
    comps = build(recipe)
    env = setup("cpu")
    try:
        data = load_train_data(recipe, comps, env, None, progress=False)
        table = caption_conditions(recipe, comps, env, data)
    finally:
        teardown(env)
    _no_encoder(monkeypatch)
    assert table(torch.tensor([0, 1])).kind == "embeddings"

    invoke_ok("prepare", str(_recipe(tmp_path, "words", enc, name="words.yaml",
                                   conditioner={"encoder": "words", "path": None})), "--device", "cpu")
    assert (tmp_path / "codes.zarr" / "zarr.json").is_file() and not (tmp_path / "codes.zarr" / GROUP).exists()


def test_a_resumed_run_refuses_features_of_another_encoder(tmp_path, capsys):
    """The run records the encoder it trained on; features replaced in the store since are refused on resume."""
    _captioned_folder(tmp_path / "pics")
    first = _encoder(tmp_path / "enc1", "t5", seed=0)
    other = _encoder(tmp_path / "enc2", "t5", seed=1)
    torch.set_num_threads(1)
    invoke_ok("train", str(_recipe(tmp_path, "t5", first)))
    recorded = json.loads((tmp_path / "run" / "inputs.json").read_text())["text_encoder"]
    assert recorded["kind"] == "t5" and recorded["path"] == str(first.resolve())
    changed = _recipe(tmp_path, "t5", other, name="other.yaml")
    invoke_ok("prepare", str(changed), "--device", "cpu", "--replace-features")
    capsys.readouterr()
    code, err = run_cli(capsys, "train", str(changed), "--resume", "train.steps=4")
    last = err.strip().splitlines()[-1]  # notes on the changed recipe come first
    assert code == 2 and last.startswith("error: text encoder t5 at "), err
    assert "is not the one run" in last and "differ in sha256" in last and "point conditioner.path" in last, err
