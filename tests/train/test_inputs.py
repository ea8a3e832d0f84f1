"""A run records what it was made from by content hash, pins its tokenizer, and refuses changed inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from train_helpers import toy_recipe

from avgkit.errors import AvgkitError
from avgkit.runs.loading import load_checkpoint
from avgkit.train.pipeline import run_recipe

TRAIN = {"steps": 2, "batch_size": 8, "lr": 3e-3, "log_every": 1, "ckpt_every": 2, "device": "cpu"}
EVAL = {"samples_per_class": 1, "grid_classes": 2}


def _fake(tmp_path, weights, run, *, epochs=1, store=None):
    return toy_recipe(tokenizer={"name": "fake-vq", "weights": str(weights), "train": {"epochs": epochs}},
                      data={"source": "digits", "store": store}, train=TRAIN, eval=EVAL, output_dir=str(run))


def test_a_changed_tokenizer_setting_trains_a_new_tokenizer(tmp_path, fake_vq_plugins):
    from avgkit.plugins import get_registry
    from avgkit.runtime.distributed import DistEnv
    from avgkit.train.pipeline import ensure_tokenizer_weights

    run = tmp_path / "run"
    first = ensure_tokenizer_weights(_fake(tmp_path, run / "tok.safetensors", run), get_registry(), DistEnv(),
                                     progress=False)
    # as `avgkit prepare digits tokenizer.weights=... tokenizer.train.epochs=5`: the same run folder
    other = ensure_tokenizer_weights(_fake(tmp_path, run / "tok-5.safetensors", run, epochs=5), get_registry(),
                                     DistEnv(), progress=False)
    assert [c["epochs"] for c in fake_vq_plugins.TRAIN_CALLS] == [1, 5]
    assert float(load_file(other)["mean"]) == pytest.approx(5 * float(load_file(first)["mean"]))


def test_a_run_pins_its_tokenizer_and_sampling_checks_it(tmp_path, fake_vq_plugins):
    base, ablation = tmp_path / "base", tmp_path / "ablation"
    weights = base / "tokenizer.safetensors"
    run_recipe(_fake(tmp_path, weights, base), progress=False)
    run_recipe(_fake(tmp_path, weights, ablation), progress=False)  # trained on the base run's tokenizer
    inputs = json.loads((ablation / "inputs.json").read_text())
    assert inputs["tokenizer"]["file"] == "tokenizer.safetensors" and inputs["tokenizer"]["from"] == str(weights)
    assert inputs["recipe"]["sha256"] and inputs["data_source"]["source"] == "digits"
    original = float(load_file(weights)["mean"])
    save_file({"mean": torch.tensor(42.0)}, str(weights))  # the base run's tokenizer is replaced
    # the ablation run uses its own copy, also after a move
    moved = shutil.move(ablation, tmp_path / "moved")
    assert float(load_checkpoint(moved).components.tokenizer.mean) == original
    # the base run notices, naming both hashes; --tokenizer overrides on purpose
    with pytest.raises(AvgkitError, match=r"tokenizer weights .*tokenizer.safetensors are not the ones run .*base was "
                                          r"trained with \(sha256:[0-9a-f]{16} now, sha256:[0-9a-f]{16} when trained\)"):
        load_checkpoint(base)
    assert float(load_checkpoint(base, tokenizer=weights).components.tokenizer.mean) == 42.0
    # and a resume of the base run with the replaced tokenizer is refused
    longer = _fake(tmp_path, weights, base).model_copy(update={"train": toy_recipe(train={**TRAIN, "steps": 3}).train})
    with pytest.raises(AvgkitError, match=r"are not the ones run .* was trained with .*point tokenizer.weights"):
        run_recipe(longer, resume=True, progress=False)


def test_an_edited_run_recipe_is_refused_when_sampling(tmp_path, builtin_plugins):
    run = tmp_path / "run"
    run_recipe(toy_recipe(data={"source": "digits", "store": None}, train=TRAIN, eval=EVAL, output_dir=str(run)),
               progress=False)
    (run / "recipe.yaml").write_text((run / "recipe.yaml").read_text().replace("cfg_scale: 2.0", "cfg_scale: 3.0"))
    with pytest.raises(AvgkitError, match="recipe.yaml was edited after training"):
        load_checkpoint(run)


def test_another_data_source_is_refused_when_the_store_exists(tmp_path, builtin_plugins):
    store = str(tmp_path / "codes.zarr")
    first = toy_recipe(data={"source": "digits", "store": store}, train=TRAIN, eval=EVAL, output_dir=str(tmp_path / "a"))
    run_recipe(first, progress=False)
    (tmp_path / "imgs" / "x").mkdir(parents=True)
    other = toy_recipe(data={"source": str(tmp_path / "nonexistent"), "store": store}, train=TRAIN, eval=EVAL,
                       output_dir=str(tmp_path / "b"))
    with pytest.raises(AvgkitError, match=r"code store .*codes.zarr was encoded from the built-in digits but "
                                          r"data.source is '.*nonexistent'; set data.source back, or set data.store"):
        run_recipe(other, progress=False)


def test_a_resume_refuses_other_codes(tmp_path, builtin_plugins):
    import zarr

    store = tmp_path / "codes.zarr"
    recipe = toy_recipe(data={"source": "digits", "store": str(store)}, train=TRAIN, eval=EVAL,
                        output_dir=str(tmp_path / "run"))
    run_recipe(recipe, progress=False)
    recorded = json.loads((tmp_path / "run" / "inputs.json").read_text())["code_store"]["fingerprint"]
    assert recorded.startswith("sha256:")
    group = zarr.open_group(str(store), mode="r+", zarr_format=3)  # as if the store were rebuilt with other codes
    meta = dict(group.attrs["avgkit"])
    meta["fingerprint"] = "sha256:" + "0" * 64
    group.attrs.update({"avgkit": meta})
    longer = recipe.model_copy(update={"train": recipe.train.model_copy(update={"steps": 3})})
    with pytest.raises(AvgkitError, match=r"holds other codes than run .* was trained on \(sha256:0{16} now, "
                                          rf"{recorded[:23]} then"):
        run_recipe(longer, resume=True, progress=False)
