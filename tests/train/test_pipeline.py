"""``run_recipe`` end to end on toy components: in memory, through a zarr store, with a trained tokenizer."""

from __future__ import annotations

import json

import pytest
from train_helpers import toy_recipe

from avgkit.errors import AvgkitError
from avgkit.train.pipeline import run_recipe

TRAIN = {
    "steps": 8,
    "batch_size": 8,
    "lr": 3e-3,
    "log_every": 2,
    "ckpt_every": 4,
    "sample_every": 4,
    "sample_classes": 3,
    "sample_per_class": 2,
    "ema": 0.9,
    "device": "cpu",
}


def test_in_memory_digits_with_classifier(tmp_path, builtin_plugins, capsys):
    recipe = toy_recipe(
        data={"source": "digits", "store": None},
        train=TRAIN,
        eval={"samples_per_class": 2, "classifier": "digits"},
        output_dir=str(tmp_path / "run"),
    )
    result = run_recipe(recipe, progress=False)
    run = tmp_path / "run"
    for name in (
        "recipe.yaml",
        "plugins.json",
        "metrics.jsonl",
        "loss.png",
        "samples.png",
        "eval.json",
        "samples/step-000004.png",
        "samples/step-000008.png",
        "checkpoints/step-000008/COMPLETE",
    ):
        assert (run / name).is_file(), name
    record = json.loads((run / "eval.json").read_text())
    assert record["samples"] == 20 and record["weights"] == "ema"
    # with EMA on, both sets of weights are sampled and scored, each named
    assert set(record["by_weights"]) == {"ema", "model"} and (run / "samples-model.png").is_file()
    assert record["by_weights"]["ema"]["class_accuracy"] == record["class_accuracy"]
    # a validation loss on the held-out digits, beside the training loss (at each checkpoint)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "val_loss" in r] == [4, 8] and record["final_val_loss"] > 0
    assert 0.0 <= record["class_accuracy"] <= 1.0 and len(record["per_class_accuracy"]) == 10
    assert result.eval["class_accuracy"] == record["class_accuracy"]
    assert [p["name"] for p in json.loads((run / "plugins.json").read_text())] == ["avgkit"]
    out = capsys.readouterr().out
    assert "(EMA weights)" in out and "(raw weights)" in out and str(run / "eval.json") in out
    assert "validation loss" in out


def test_zarr_store_is_prepared_then_reused(tmp_path, builtin_plugins, capsys):
    store = str(tmp_path / "codes.zarr")
    first = toy_recipe(
        data={"source": "digits", "store": store}, train={**TRAIN, "sample_every": None}, output_dir=str(tmp_path / "a")
    )
    run_recipe(first, progress=False)
    assert "encoding digits" in capsys.readouterr().err
    again = first.model_copy(update={"output_dir": str(tmp_path / "b")})
    result = run_recipe(again, progress=False)
    assert "encoding digits" not in capsys.readouterr().err
    assert result.train.step == 8
    # a store made by another tokenizer is refused with the fix
    other = toy_recipe(
        tokenizer={"name": "toy-patch", "levels": 8},
        data={"source": "digits", "store": store},
        train=TRAIN,
        output_dir=str(tmp_path / "c"),
    )
    with pytest.raises(AvgkitError, match="re-run prepare"):
        run_recipe(other, progress=False)


def test_a_non_square_run_then_a_store_of_another_size_is_refused(tmp_path, builtin_plugins):
    """8x16 images as 4x8 codes through the store, the loop and the final grid; then the same store at 8."""
    from PIL import Image

    from avgkit.data.store import CodeStore

    store = str(tmp_path / "codes.zarr")
    wide = toy_recipe(
        tokenizer={"name": "toy-patch", "image_size": [8, 16], "patch": 2},
        data={"source": "digits", "store": store},
        train={**TRAIN, "steps": 4, "sample_every": None},
        eval={"samples_per_class": 2, "grid_classes": 3},
        output_dir=str(tmp_path / "a"),
    )
    result = run_recipe(wide, progress=False)
    meta = CodeStore.open(store).meta
    assert meta.resolution == (8, 16) and meta.grid == (4, 8) and result.train.step == 4
    from avgkit.images import MIN_CELL

    with Image.open(tmp_path / "a" / "samples.png") as grid:
        height = grid.size[1]
    scale = -(-MIN_CELL // 16)  # cells of 8x16 pixels, upscaled until their long side reaches MIN_CELL
    assert height == 16 + 3 * (8 * scale + 2) + 2  # a title, then 3 rows of cells 8 * scale high, 2 apart
    square = toy_recipe(
        tokenizer={"name": "toy-patch", "image_size": 8, "patch": 2},
        data={"source": "digits", "store": store},
        train={**TRAIN, "steps": 4},
        output_dir=str(tmp_path / "b"),
    )
    with pytest.raises(AvgkitError, match=r"has resolution 8x16 .* expects 8; re-run prepare") as err:
        run_recipe(square, progress=False)
    assert "\n" not in str(err.value)


def test_tokenizer_is_trained_when_missing_then_reused(tmp_path, fake_vq_plugins):
    weights = tmp_path / "tok" / "vq.safetensors"
    recipe = toy_recipe(
        tokenizer={"name": "fake-vq", "weights": str(weights), "train": {"epochs": 3}},
        data={"source": "digits", "store": str(tmp_path / "codes.zarr")},
        train={**TRAIN, "sample_every": None, "steps": 2},
        output_dir=str(tmp_path / "a"),
    )
    run_recipe(recipe, progress=False)
    assert weights.is_file()
    assert fake_vq_plugins.TRAIN_CALLS == [{"n": 1438, "eval": 359, "epochs": 3}]
    run_recipe(recipe.model_copy(update={"output_dir": str(tmp_path / "b")}), progress=False)
    assert len(fake_vq_plugins.TRAIN_CALLS) == 1  # the weights now exist: reused


def test_missing_weights_without_train_block(tmp_path, fake_vq_plugins):
    recipe = toy_recipe(
        tokenizer={"name": "fake-vq", "weights": str(tmp_path / "nope.safetensors")},
        data={"source": "digits", "store": None},
        train=TRAIN,
        output_dir=str(tmp_path / "a"),
    )
    with pytest.raises(AvgkitError, match="not found.*tokenizer.train"):
        run_recipe(recipe, progress=False)


def test_a_run_with_relative_paths_loads_from_anywhere_and_after_a_move(tmp_path, fake_vq_plugins, monkeypatch):
    import shutil

    from avgkit.runs.loading import load_checkpoint

    monkeypatch.chdir(tmp_path)
    recipe = toy_recipe(
        tokenizer={"name": "fake-vq", "weights": "runs/r/vq.safetensors", "train": {"epochs": 1}},
        data={"source": "digits", "store": None},
        train={**TRAIN, "sample_every": None, "steps": 2},
        output_dir="runs/r",
    )
    run_recipe(recipe, progress=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_checkpoint(tmp_path / "runs" / "r").tokenizer_weights == tmp_path / "runs" / "r" / "vq.safetensors"
    shutil.move(tmp_path / "runs" / "r", tmp_path / "moved")
    assert load_checkpoint(tmp_path / "moved").tokenizer_weights == tmp_path / "moved" / "vq.safetensors"


def test_resume_checks_the_model_first_and_keeps_every_earlier_recipe(tmp_path, builtin_plugins, capsys):
    run = tmp_path / "run"
    first = toy_recipe(data={"source": "digits", "store": None}, train={**TRAIN, "steps": 4, "sample_every": None},
                       eval={"samples_per_class": 1}, output_dir=str(run))
    run_recipe(first, progress=False)
    stored = (run / "recipe.yaml").read_text()
    # another model: refused before anything in the run is rewritten
    wider = first.model_copy(update={"backbone": first.backbone.model_copy(update={"options": {"dim": 24, "layers": 1}})})
    with pytest.raises(AvgkitError, match="does not fit this recipe's model.*mis-shaped"):
        run_recipe(wider, resume=True, progress=False)
    assert (run / "recipe.yaml").read_text() == stored and not list(run.glob("recipe.previous*"))
    # a longer run: resumed, the change named, the earlier recipe kept, and again
    capsys.readouterr()
    for steps, n in ((6, 1), (8, 2)):
        longer = first.model_copy(update={"train": first.train.model_copy(update={"steps": steps})})
        run_recipe(longer, resume=True, progress=False)
        assert f"train.steps: {steps - 2} -> {steps}" in capsys.readouterr().err
        assert (run / f"recipe.previous-{n}.yaml").is_file()
    assert (run / "recipe.previous-1.yaml").read_text() == stored
    # fewer steps than the run has made: refused with the fix
    with pytest.raises(AvgkitError, match="train.steps=5 is below step 8, which .* has reached; pass train.steps=8"):
        run_recipe(first.model_copy(update={"train": first.train.model_copy(update={"steps": 5})}), resume=True,
                   progress=False)


def test_resuming_with_more_steps_says_what_happens_to_the_learning_rate(tmp_path, builtin_plugins, capsys):
    run = tmp_path / "run"
    train = {**TRAIN, "steps": 4, "sample_every": None, "schedule": "cosine", "lr": 1e-3}
    first = toy_recipe(data={"source": "digits", "store": None}, train=train, eval={"samples_per_class": 1},
                       output_dir=str(run))
    run_recipe(first, progress=False)
    capsys.readouterr()
    longer = first.model_copy(update={"train": first.train.model_copy(update={"steps": 8})})
    run_recipe(longer, resume=True, progress=False)
    err = capsys.readouterr().err
    # the cosine reached 0 at step 4; stretched over 8 steps it is back at half the peak there
    assert "the learning rate at step 4 changes from 0 to 0.0005: the cosine schedule now runs over 8 steps" in err


def test_a_tokenizer_with_parameters_but_no_weights_is_refused(tmp_path, fake_vq_plugins):
    recipe = toy_recipe(tokenizer={"name": "fake-vq"}, data={"source": "digits", "store": None}, train=TRAIN,
                        output_dir=str(tmp_path / "a"))
    with pytest.raises(AvgkitError, match="has no weights, so its codes would come from random parameters"):
        run_recipe(recipe, progress=False)


def test_the_class_count_is_checked_before_any_image_is_encoded(tmp_path, builtin_plugins):
    from PIL import Image

    for c in ("a", "b", "c"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (12, 12), 40 * i).save(tmp_path / "imgs" / c / f"{i}.png")
    store = tmp_path / "codes.zarr"
    recipe = toy_recipe(conditioner={"name": "toy-class", "num_classes": 2},
                        data={"source": str(tmp_path / "imgs"), "store": str(store)}, train=TRAIN,
                        output_dir=str(tmp_path / "run"))
    with pytest.raises(AvgkitError, match="the data has 3 classes but the conditioner was built for 2; set data.num"):
        run_recipe(recipe, progress=False)
    assert not store.exists()


def test_cuda_graph_on_where_it_cannot_apply_is_refused_before_writing(tmp_path, builtin_plugins):
    recipe = toy_recipe(data={"source": "digits", "store": None}, train={**TRAIN, "cuda_graph": "on"},
                        output_dir=str(tmp_path / "run"))
    with pytest.raises(AvgkitError, match="train.cuda_graph=on needs a CUDA device; use train.cuda_graph=auto or off"):
        run_recipe(recipe, progress=False)
    assert not (tmp_path / "run").exists()
