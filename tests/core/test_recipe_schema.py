"""The recipe reference (docs/recipe-schema.md, `avgkit recipes schema`) and `avgkit recipes show`."""

from __future__ import annotations

from pathlib import Path

import yaml

from avgkit.build import build, parameter_counts
from avgkit.recipe import DataSection, EvalSection, Recipe, TrainSection, load_recipe, validate_recipe
from avgkit.recipe_schema import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "recipe-schema.md"


def test_committed_page_is_the_generated_one():
    assert PAGE.read_text() == render(), (
        "docs/recipe-schema.md is out of date: run `avgkit recipes schema > docs/recipe-schema.md`"
    )


def test_every_recipe_key_is_described():
    for model in (Recipe, DataSection, TrainSection, EvalSection):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} needs a Field(description=...) for the schema page"
            assert f"| `{name}` |" in render()


def test_schema_command_one_section_and_a_misspelt_one(cli):
    code, out, _ = cli("recipes", "schema", "train")
    assert code == 0 and out.startswith("## train") and "| `sample_every` | int \\| None (>= 1) | `null` |" in out
    assert "## eval" not in out
    code, _, err = cli("recipes", "schema", "trian")
    assert code == 2 and "no recipe section 'trian' (did you mean 'train'?)" in err


def test_show_prints_every_key_including_nulls(cli, toy_recipe_file):
    code, out, _ = cli("recipes", "show", str(toy_recipe_file), "train.steps=3")
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["train"]["ema"] is None and shown["train"]["sample_every"] is None and shown["train"]["steps"] == 3
    assert shown["data"] is None and shown["output_dir"] is None and shown["eval"]["use_ema"] is True
    assert shown["backbone"] == {"name": "toy-gru", "preset": "tiny", "vocab_size": None, "num_tokens": None,
                                 "dim": 32, "layers": 2}  # the preset and the defaults, filled in
    assert shown["tokenizer"]["train"] is None and shown["sampler"]["top_k"] == 5
    # what show prints is a recipe again, building the same model
    again = validate_recipe(shown)
    original = load_recipe(str(toy_recipe_file), ["train.steps=3"])
    assert parameter_counts(build(again, device="meta")) == parameter_counts(build(original, device="meta"))
    code, out, _ = cli("recipes", "show", str(toy_recipe_file), "--as-written")
    assert yaml.safe_load(out)["backbone"] == {"name": "toy-gru", "preset": "tiny"}
