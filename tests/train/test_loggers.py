"""Metric loggers: the recipe's ``loggers:`` receive the training records, sample grids and evaluation."""

from __future__ import annotations

import json

import pytest
from train_helpers import toy_recipe

from avgkit.build import build
from avgkit.errors import AvgkitError
from avgkit.train.pipeline import run_recipe

TRAIN = {"steps": 4, "batch_size": 8, "lr": 3e-3, "log_every": 2, "ckpt_every": 4, "sample_every": 2,
         "sample_classes": 2, "sample_per_class": 2, "device": "cpu"}


def test_a_run_feeds_its_loggers(tmp_path, builtin_plugins):
    recipe = toy_recipe(data={"source": "digits", "store": None}, train=TRAIN,
                        eval={"samples_per_class": 1, "classifier": "none"}, output_dir=str(tmp_path / "run"),
                        loggers=[{"name": "jsonl", "path": "tracker/log.jsonl"}])
    run_recipe(recipe, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "tracker" / "log.jsonl").read_text().splitlines()]
    scalars = [x for x in lines if "images" not in x]
    assert [x["step"] for x in scalars if "train/loss" in x] == [2, 4]
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/elapsed"):
        assert all(isinstance(x[key], float) for x in scalars if "train/loss" in x), key
    assert any(k.startswith("eval/") for x in scalars for k in x)
    images = [(x["step"], name, path) for x in lines if "images" in x for name, path in x["images"].items()]
    assert [(s, n) for s, n, _ in images] == [(2, "samples"), (4, "samples"), (4, "final_samples")]
    assert images[0][2].endswith("samples/step-000002.png") and images[-1][2].endswith("samples.png")
    # metrics.jsonl, the run's own record, is written as always
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 2
    assert "loggers" in (tmp_path / "run" / "recipe.yaml").read_text()


def test_recipes_without_loggers_keep_their_text(builtin_plugins):
    recipe = toy_recipe()
    assert recipe.loggers == [] and "loggers" not in recipe.to_dict()
    named = toy_recipe(loggers=["jsonl"])
    assert named.to_dict()["loggers"] == [{"name": "jsonl"}]


def test_unknown_logger_or_option_fails_at_validation(builtin_plugins):
    with pytest.raises(AvgkitError, match=r"unknown metric logger 'jsnol' \(did you mean 'jsonl'\?\); `avgkit ls loggers`"):
        build(toy_recipe(loggers=["jsnol"]), device="meta")
    with pytest.raises(AvgkitError, match=r"metric_logger 'jsonl': option 'path': Field required"):
        build(toy_recipe(loggers=["jsonl"]), device="meta")


def test_ls_loggers(cli):
    code, out, _ = cli("ls", "loggers", "--options")
    assert code == 0 and "jsonl" in out and "path (str" in out
