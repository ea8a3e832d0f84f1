"""``avgkit eval RUN`` (``score_run``): a run's checkpoint sampled and scored as the end of training does."""

from __future__ import annotations

import json

import pytest
from train_helpers import toy_recipe

from avgkit.errors import AvgkitError
from avgkit.train.pipeline import run_recipe
from avgkit.train.score import score_run

TRAIN = {"steps": 8, "batch_size": 8, "lr": 3e-3, "log_every": 2, "ckpt_every": 4, "sample_every": None,
         "ema": 0.9, "device": "cpu"}


@pytest.fixture
def digits_run(tmp_path, builtin_plugins):
    recipe = toy_recipe(data={"source": "digits", "store": None}, train=TRAIN,
                        eval={"samples_per_class": 2, "classifier": "digits"}, output_dir=str(tmp_path / "run"))
    run_recipe(recipe, progress=False)
    return tmp_path / "run"


def test_a_class_run_scores_as_training_did(digits_run, tmp_path, capsys):
    trained = (digits_run / "eval.json").read_text()
    with pytest.raises(AvgkitError, match=r"eval.json already holds a report; pass --out for another folder, or "
                                          r"--overwrite"):
        score_run(digits_run, device="cpu")
    record = score_run(digits_run, device="cpu", overwrite=True)
    assert json.loads((digits_run / "eval.json").read_text()) == record
    before = json.loads(trained)
    # the same samples and scores; the sampler as the run stored it (every option resolved)
    assert before["sampler"].items() <= record.pop("sampler").items() and before.pop("sampler")
    assert record == before
    rescored = (digits_run / "eval.json").read_text()
    assert record["weights"] == "ema" and set(record["by_weights"]) == {"ema", "model"}
    out = capsys.readouterr().out
    assert "digit-classifier accuracy of 20 samples" in out and "(EMA weights)" in out

    other = tmp_path / "other"
    record = score_run(digits_run, out=other, per_class=1, cfg=1.0, seed=3, step=4, batch_size=7, device="cpu")
    assert json.loads((other / "eval.json").read_text()) == record
    assert (record["step"], record["samples"], record["samples_per_class"], record["seed"]) == (4, 10, 1, 3)
    assert record["sampler"]["cfg_scale"] == 1.0 and record["checkpoint"].endswith("step-000004")
    assert (other / "samples.png").is_file() and (other / "samples-model.png").is_file()
    assert record["final_train_loss"] == [json.loads(r) for r in (digits_run / "metrics.jsonl").read_text()
                                          .splitlines()][1]["loss"]  # the step-4 record
    assert (digits_run / "eval.json").read_text() == rescored  # --out leaves the run's report alone


@pytest.mark.parametrize("options, words", [
    ({"classifier": "none"}, "has eval.classifier=none: nothing to score it with; pass --classifier"),
    ({"classifier": "text-digits"}, "classifier text-digits scores text-conditioned samples, but run"),
    ({"classifier": "mnist"}, "unknown eval.classifier 'mnist'"),
    ({"per_class": 0}, "--per-class must be at least 1"),
    ({"cfg": -1.0}, "cfg_scale"),
    ({"step": 5}, "no complete checkpoint at step 5 (it has: 4, 8)"),
])
def test_bad_settings_are_refused(digits_run, tmp_path, options, words):
    with pytest.raises(AvgkitError, match=None) as err:
        score_run(digits_run, out=tmp_path / "o", device="cpu", **options)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "o" / "eval.json").exists()
