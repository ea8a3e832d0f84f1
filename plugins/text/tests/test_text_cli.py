"""Text to image from the command line: `avgkit train` on a captioned folder, `avgkit sample --prompt`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from text_testutil import captioned_folder, run_cli, tiny_text_recipe
from typer.testing import CliRunner

from avgkit.cli.app import app

CAPTIONS = ["a dark square", "a light square", "a light square", "stripes"]


def _captioned_folder(root):
    return captioned_folder(root, CAPTIONS)


def _recipe(tmp, **changes):
    recipe = {**tiny_text_recipe(tmp, "text-tiny", {"layers": 1, "width": 16, "heads": 2}), **changes}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A text-conditioned run trained for two steps by `avgkit train` on a tiny captioned folder."""
    tmp = tmp_path_factory.mktemp("text")
    _captioned_folder(tmp / "pics")
    torch.set_num_threads(1)
    result = CliRunner().invoke(app, ["train", str(_recipe(tmp))], prog_name="avgkit")
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return tmp


def test_train_records_captions_and_samples_them(text_run):
    from avgkit.data.store import CodeStore

    run = text_run / "run"
    table = json.loads((run / "captions.json").read_text())["captions"]
    assert table == sorted(set(CAPTIONS))
    store = CodeStore.open(text_run / "codes.zarr")
    assert store.meta.class_names == table and store.meta.source["kind"] == "captioned-folder"
    assert sorted(store.labels[:].tolist()) == sorted(table.index(c) for c in CAPTIONS)
    record = json.loads((run / "eval.json").read_text())
    assert record["captions"] == table and record["samples"] == 2 * len(table)
    assert (run / "samples.png").is_file() and (run / "samples" / "step-000002.png").is_file()


def test_sample_prompts_from_the_command_line(text_run, tmp_path):
    (tmp_path / "prompts.txt").write_text("stripes\n\na light square and stripes\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "sample", str(text_run / "run"), "--prompt", "a dark square", "--prompts", str(tmp_path / "prompts.txt"),
        "--per-class", "2", "--batch-size", "3", "--device", "cpu", "--quiet", "--out", str(out)],
        prog_name="avgkit")
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    prompts = ["a dark square", "stripes", "a light square and stripes"]
    record = json.loads((out / "sampling.json").read_text())
    assert record["prompts"] == prompts and record["prompts_in_training"] == [True, True, False]
    assert record["classes"] is None and record["num_images"] == 6
    data = np.load(out / "samples.npz")
    assert data["arr_0"].shape == (6, 8, 8, 3) and data["arr_1"].tolist() == [0, 0, 1, 1, 2, 2]
    assert sorted(p.name for p in (out / "images").iterdir())[:2] == ["000000-prompt0.png", "000001-prompt0.png"]
    from PIL import Image

    grid = np.asarray(Image.open(out / "grid.png").convert("L"))
    cell = 48 + 2  # 8 px images upscaled to the grid's smallest cell, 2 px apart
    margin = grid.shape[1] - 2 * cell - 2
    assert grid.shape[0] >= 3 * cell  # a row per prompt
    # the prompts are written left of their rows: the margin holds the longest one, not a class id
    assert margin > 100 and (grid[:, 60:margin] < 128).any()

    # the Python API draws the same images for the same prompts
    import avgkit.api as api

    gen = api.load(text_run / "run", device="cpu")
    again = gen.generate(prompts=prompts, n_per_class=2, output="uint8")
    assert np.array_equal(again, data["arr_0"])


@pytest.mark.parametrize("args, words", [
    (("--classes", "0-1"), "is conditioned on text, not classes; pass --prompt"),
    ((), "is conditioned on text; pass --prompt"),
    (("--prompts", "EMPTY"), "holds no prompts"),
    (("--prompt", " "), "--prompt is empty"),
])
def test_text_run_sampling_errors(text_run, tmp_path, capsys, args, words):
    (tmp_path / "empty.txt").write_text("\n  \n")
    args = tuple(str(tmp_path / "empty.txt") if a == "EMPTY" else a for a in args)
    code, err = run_cli(capsys, "sample", str(text_run / "run"), "--device", "cpu", "--quiet",
                        "--out", str(tmp_path / "o"), *args)
    assert code == 2 and words in err and err.startswith("error: ") and err.count("\n") == 1


def test_prompts_for_a_class_conditional_run_are_refused(tmp_path, capsys):
    from avgkit.build import build
    from avgkit.recipe import validate_recipe
    from avgkit.runs.checkpoint import save_checkpoint

    recipe = validate_recipe({"name": "toy", "tokenizer": "toy-patch", "backbone": "toy-gru:tiny",
                              "conditioner": {"name": "toy-class", "num_classes": 3}})
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(recipe.to_yaml())
    model = build(recipe).model
    save_checkpoint(run / "checkpoints", 1, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    trainer_state={"step": 1})
    code, err = run_cli(capsys, "sample", str(run), "--prompt", "a cat", "--device", "cpu", "--out",
                        str(tmp_path / "o"))
    assert code == 2 and "is class-conditional" in err and "pass --classes" in err and err.count("\n") == 1


def test_text_conditioner_refuses_class_data_and_captions_refuse_class_conditioners(tmp_path, capsys):
    _captioned_folder(tmp_path / "pics")
    path = _recipe(tmp_path, data={"source": "digits", "store": None, "val_source": None},
                   tokenizer={"name": "toy-patch", "image_size": 8, "patch": 2, "levels": 16, "channels": 1})
    code, err = run_cli(capsys, "train", str(path))
    assert code == 2 and "conditioned on text but the built-in digits has class labels" in err, err
    path = _recipe(tmp_path, conditioner={"name": "adaln", "num_classes": 3})
    code, err = run_cli(capsys, "train", str(path))
    assert code == 2 and "is captioned" in err and "conditioner: text" in err, err


def test_validation_captions_must_be_training_captions(tmp_path, capsys):
    from PIL import Image

    _captioned_folder(tmp_path / "pics")
    (tmp_path / "val").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "val" / "v.png")
    (tmp_path / "val" / "captions.jsonl").write_text(json.dumps({"path": "v.png", "caption": "a circle"}) + "\n")
    path = _recipe(tmp_path, data={"source": str(tmp_path / "pics"), "store": None, "val_source": str(tmp_path / "val")})
    code, err = run_cli(capsys, "train", str(path))
    assert code == 2 and "not training captions (first: 'a circle')" in err, err
    assert not (tmp_path / "run" / "captions.json").exists()  # a run that failed before training leaves nothing


def test_packaged_text_digits_recipe_builds(capsys):
    code, err = run_cli(capsys, "train", "text-digits", "--dry-run")
    assert code == 0, err


def test_text_digits_run_scores_seen_and_held_out_numbers(tmp_path, capsys):
    """eval.classifier=text-digits: every number 20-99 sampled by its words at CFG 1 and the recipe's, both halves read."""
    path = _recipe(
        tmp_path,
        tokenizer={"name": "toy-patch", "image_size": [32, 64], "patch": 8, "levels": 16},
        data={"source": "text-digits", "store": None, "val_source": None},
        eval={"samples_per_class": 2, "batch_size": 160, "grid_classes": 10, "classifier": "text-digits"},
    )
    torch.set_num_threads(1)
    result = CliRunner().invoke(app, ["train", str(path)], prog_name="avgkit")
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    run = tmp_path / "run"
    record = json.loads((run / "eval.json").read_text())
    assert record["classifier"].startswith("text-digits") and record["cfg_scales"] == [1.0, 2.0]
    assert record["samples"] == 160 and len(record["captions"]) == 80 and "forty-one" in record["captions"]
    held = [c for c, seen in zip(record["captions"], record["prompts_in_training"], strict=True) if not seen]
    assert held == ["twenty-three", "thirty-seven", "forty-one", "fifty-six", "sixty-four", "seventy-eight",
                    "eighty-five", "ninety-two"]
    for scores in (record, *record["by_cfg"].values()):
        assert 0 <= scores["seen_accuracy"] <= 1 and 0 <= scores["held_out_accuracy"] <= 1
        assert len(scores["per_number"]) == 80
    assert set(record["by_cfg"]) == {"1", "2"} and record["held_out_accuracy"] == record["by_cfg"]["2"]["held_out_accuracy"]
    assert "CFG 1: seen " in result.output and "CFG 2: seen " in result.output and "held-out " in result.output
    from PIL import Image

    grid = Image.open(run / "samples.png")
    assert grid.height >= 10 * 32  # a row per shown number (32x64 images): the eight held out, then seen ones
    assert grid.width >= 2 * 64

    # `avgkit eval RUN` scores the run again from its checkpoint: the same record
    code, err = run_cli(capsys, "eval", str(run), "--device", "cpu")
    assert code == 2 and "eval.json already holds a report" in err and "--overwrite" in err, err
    again = CliRunner().invoke(app, ["eval", str(run), "--device", "cpu", "--overwrite"], prog_name="avgkit")
    assert again.exit_code == 0, f"{again.output}\n{again.exception!r}"
    rescored = json.loads((run / "eval.json").read_text())
    assert record["sampler"].items() <= rescored.pop("sampler").items() and record.pop("sampler")
    assert rescored == record and "CFG 2: seen " in again.output
    # other settings, into another folder
    out = tmp_path / "cfg3"
    other = CliRunner().invoke(app, ["eval", str(run), "--per-class", "1", "--cfg", "3", "--seed", "5", "--device",
                                     "cpu", "--out", str(out)], prog_name="avgkit")
    assert other.exit_code == 0, f"{other.output}\n{other.exception!r}"
    scored = json.loads((out / "eval.json").read_text())
    assert scored["cfg_scales"] == [1.0, 3.0] and set(scored["by_cfg"]) == {"1", "3"} and scored["samples"] == 80
    assert scored["sampler"]["cfg_scale"] == 3.0 and scored["seed"] == 5 and scored["samples_per_class"] == 1
    assert scored["captions"] == record["captions"] and scored["prompts_in_training"] == record["prompts_in_training"]
    assert scored["held_out_accuracy"] == scored["by_cfg"]["3"]["held_out_accuracy"] and (out / "samples.png").is_file()
    for args, words in [(("--classifier", "digits"), "classifier digits scores class-conditional samples"),
                        (("-r", "digits:train"), "--reference is for scoring samples"),
                        (("--per-class", "0"), "--per-class must be at least 1")]:
        code, err = run_cli(capsys, "eval", str(run), "--device", "cpu", "--out", str(tmp_path / "x"), *args)
        assert code == 2 and words in err and err.count("\n") == 1, err
    (tmp_path / "s.npz").write_bytes(b"")
    code, err = run_cli(capsys, "eval", str(tmp_path / "s.npz"), "--cfg", "3")
    assert code == 2 and "--cfg is for scoring a training run" in err, err


@pytest.mark.parametrize("classifier, words", [
    ("text-digits", "reads the numbers of data.source: text-digits"),
    ("digits", "eval.classifier=digits scores class-conditional samples"),
])
def test_text_scorers_fit_their_runs(tmp_path, capsys, classifier, words):
    _captioned_folder(tmp_path / "pics")
    path = _recipe(tmp_path, eval={"samples_per_class": 1, "classifier": classifier})
    code, err = run_cli(capsys, "train", str(path))
    assert code == 2 and words in err, err
