"""Recipes built on other recipes: ``base:`` with a deep merge."""

from __future__ import annotations

import pytest
import yaml

from avgkit.build import build, parameter_counts
from avgkit.errors import AvgkitError
from avgkit.recipe import load_recipe, merge_recipes, packaged_recipes, read_recipe, validate_recipe

BASE = """\
name: parent
description: the parent
tokenizer: toy-patch
backbone: {name: toy-gru, preset: tiny, layers: 3}
conditioner: {name: toy-class, num_classes: 10}
sampler: ar:llamagen
data: {source: digits, store: null}
train: {steps: 50, lr: 0.002, betas: [0.9, 0.99]}
"""


def _write(path, text):
    path.write_text(text)
    return path


def test_deep_merge_keeps_base_keys_and_replaces_leaves():
    out = merge_recipes({"train": {"steps": 5, "lr": 1.0}, "eval": {"seed": 1}, "a": [1, 2]},
                        {"train": {"steps": 7}, "a": [3]})
    assert out == {"train": {"steps": 7, "lr": 1.0}, "eval": {"seed": 1}, "a": [3]}


def test_a_component_merges_options_unless_it_names_another_component():
    base = {"backbone": {"name": "mamba2", "preset": "digits", "dim": 8}, "sampler": "ar:llamagen"}
    same = merge_recipes(base, {"backbone": {"dim": 16}, "sampler": {"top_k": 3}})
    assert same["backbone"] == {"name": "mamba2", "preset": "digits", "dim": 16}
    assert same["sampler"] == {"name": "ar", "preset": "llamagen", "top_k": 3}
    other = merge_recipes(base, {"backbone": {"name": "my-net"}})
    assert other["backbone"] == {"name": "my-net"}  # neither mamba2's preset nor its options
    assert merge_recipes(base, {"backbone": "my-net:tiny"})["backbone"] == {"name": "my-net", "preset": "tiny"}


def test_base_by_relative_path_with_overrides(tmp_path):
    _write(tmp_path / "parent.yaml", BASE)
    (tmp_path / "sub").mkdir()
    child = _write(tmp_path / "sub" / "child.yaml",
                   "base: ../parent.yaml\nname: child\ntrain: {steps: 9}\nbackbone: {dim: 16}\n")
    r = load_recipe(str(child), ["train.lr=0.5"])
    assert r.name == "child" and r.description == "the parent"
    assert (r.train.steps, r.train.lr, r.train.betas) == (9, 0.5, (0.9, 0.99))
    assert r.backbone.preset == "tiny" and r.backbone.options == {"layers": 3, "dim": 16}
    assert r.sampler.preset == "llamagen"
    # what a run stores (recipe.yaml is Recipe.to_yaml()) is the resolved recipe, loadable on its own
    stored = yaml.safe_load(r.to_yaml())
    assert "base" not in stored and validate_recipe(stored) == r
    build(r, device="meta")


def test_base_by_packaged_name_and_a_list_of_bases(tmp_path):
    _write(tmp_path / "steps.yaml", "train: {steps: 3}\n")
    child = _write(tmp_path / "child.yaml", "base: [digits, steps.yaml]\nname: child\ntrain: {lr: 0.01}\n")
    r = load_recipe(str(child))
    digits = load_recipe("digits")
    assert (r.train.steps, r.train.lr, r.train.batch_size) == (3, 0.01, digits.train.batch_size)
    assert r.backbone == digits.backbone and r.data == digits.data


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.yaml": "base: a.yaml\n"}, r"recipe bases form a cycle: a.yaml -> a.yaml"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: c.yaml\n", "c.yaml": "base: a.yaml\n"},
         r"recipe bases form a cycle: a.yaml -> b.yaml -> c.yaml -> a.yaml"),
        ({"a.yaml": "base: digitz\n"}, r"a.yaml: base names no recipe 'digitz' \(did you mean 'digits'\?\)"),
        ({"a.yaml": "base: nowhere.yaml\n"}, r"a.yaml: base recipe file not found: .*nowhere.yaml"),
        ({"a.yaml": "base: {x: 1}\n"}, r"base must be a recipe name or a .yaml path"),
    ],
)
def test_bad_bases_are_one_line_errors(tmp_path, files, message):
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises(AvgkitError, match=message) as info:
        read_recipe(tmp_path / "a.yaml")
    assert "\n" not in str(info.value)


def test_cli_refuses_a_cycle_in_one_line(tmp_path, cli):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    code, out, err = cli("recipes", "show", str(tmp_path / "a.yaml"))
    assert code == 2 and err.strip().count("\n") == 0 and "cycle: a.yaml -> b.yaml -> a.yaml" in err


def test_packaged_ablations_are_written_on_their_paper_recipe():
    found = packaged_recipes()
    ablations = {n: p for n, p in found.items() if p.parent.name == "ablations"}
    assert len(ablations) == 8
    for name, path in ablations.items():
        text = yaml.safe_load(path.read_text())
        parent = text["base"]
        assert parent in ("aim-b", "aim-l"), f"{path} should start from its paper recipe"
        assert set(text) <= {"base", "name", "description", "conditioner"}, f"{path} repeats its base"
        mine, theirs = load_recipe(name).to_dict(), load_recipe(parent).to_dict()
        for key in set(mine) | set(theirs):
            if key not in ("name", "description", "conditioner"):
                assert mine.get(key) == theirs.get(key), f"{name}.{key} differs from {parent}"


@pytest.mark.parametrize("name, non_embedding", [("aim-b-adaln-single", 93_377_472), ("aim-b-adaln", 134_073_024),
                                                 ("aim-l-g4", "aim-l")])
def test_ablation_parameter_counts(name, non_embedding):
    """The paper's Table 3 counts (also asserted on the components by the mamba plugin's tests)."""
    if isinstance(non_embedding, str):
        non_embedding = parameter_counts(build(load_recipe(non_embedding), device="meta"))["non_embedding"]
    assert parameter_counts(build(load_recipe(name), device="meta"))["non_embedding"] == non_embedding
