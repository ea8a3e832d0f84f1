import subprocess
import sys

import pytest

from avgkit.build import build, parameter_counts
from avgkit.errors import AvgkitError
from avgkit.recipe import apply_overrides, load_recipe, packaged_recipes, validate_recipe

BASE = {
    "name": "t",
    "tokenizer": "toy-patch",
    "backbone": {"name": "toy-gru", "preset": "tiny"},
    "conditioner": {"name": "toy-class", "num_classes": 10},
}


def test_shorthand_and_options():
    r = validate_recipe({**BASE, "sampler": "ar:llamagen"})
    assert r.sampler.name == "ar" and r.sampler.preset == "llamagen"
    assert r.conditioner.options == {"num_classes": 10}
    assert r.to_dict()["conditioner"] == {"name": "toy-class", "num_classes": 10}


@pytest.mark.parametrize(
    "raw, message",
    [
        ({**BASE, "trian": {}}, r"unknown key 'trian' \(did you mean 'train'\?\)"),
        ({**BASE, "train": {"stpes": 3}}, r"unknown key 'train.stpes' \(did you mean 'steps'\?\)"),
        ({**BASE, "train": {"steps": -1}}, r"train.steps: Input should be greater than or equal to 1"),
        ({k: v for k, v in BASE.items() if k != "backbone"}, r"missing required key 'backbone'"),
        ([1, 2], r"must be a YAML mapping"),
        (None, r"x.yaml is empty; a recipe needs at least name"),
        ({**BASE, "train": {"stpes": 3, "lr": -1}}, r"train.lr: Input should be greater than 0 \(also: train.stpes\)"),
    ],
)
def test_schema_errors_are_one_line(raw, message):
    with pytest.raises(AvgkitError, match=message) as info:
        validate_recipe(raw, "x.yaml")
    assert "\n" not in str(info.value)


def test_overrides():
    raw = apply_overrides(BASE, ["train.steps=7", "conditioner.modulate=false", "backbone=toy-gru", "sampler.top_p=0.9"])
    r = validate_recipe(raw)
    assert r.train.steps == 7 and r.conditioner.options["modulate"] is False
    assert r.backbone.preset is None and r.sampler.options == {"top_p": 0.9}
    raw = apply_overrides({**BASE, "sampler": "ar:llamagen"}, ["sampler.top_k=3"])
    assert validate_recipe(raw).sampler.preset == "llamagen"
    with pytest.raises(AvgkitError, match="not key=value"):
        apply_overrides(BASE, ["train.steps"])


def test_component_option_errors_name_the_component():
    r = validate_recipe(apply_overrides(BASE, ["conditioner.modulat=1"]))
    with pytest.raises(AvgkitError, match=r"conditioner 'toy-class': unknown option 'modulat' \(did you mean 'modulate'\?\)"):
        build(r, device="meta")
    r = validate_recipe(apply_overrides(BASE, ["backbone.preset=huge"]))
    with pytest.raises(AvgkitError, match=r"backbone 'toy-gru' has no preset 'huge'"):
        build(r, device="meta")
    r = validate_recipe(apply_overrides(BASE, ["backbone=toy-gr"]))
    with pytest.raises(AvgkitError, match=r"unknown backbone 'toy-gr' \(did you mean 'toy-gru'\?\)"):
        build(r, device="meta")


def test_agreement_between_tokenizer_and_backbone():
    r = validate_recipe(apply_overrides(BASE, ["backbone.vocab_size=99"]))
    with pytest.raises(AvgkitError, match="vocab_size=99 but the tokenizer gives 16"):
        build(r, device="meta")
    c = build(validate_recipe(BASE), device="meta")
    assert c.backbone.vocab_size == 16 and c.backbone.num_tokens == 16


def test_counts_split_embeddings():
    c = build(validate_recipe(BASE), device="meta")
    n = parameter_counts(c)
    emb = 16 * 32 + 11 * 32
    assert n["total"] - n["non_embedding"] == emb
    assert n["total"] == n["backbone"] + n["conditioner"]


def test_every_shipped_recipe_validates_and_builds_on_meta():
    found = packaged_recipes()
    assert {"digits", "aim-b", "aim-l", "aim-xl", "aim-1b"} <= set(found)
    for name, path in found.items():
        r = load_recipe(str(path))
        assert r.name == name, f"{path}: recipe name {r.name!r} differs from its file name"
        c = build(r, device="meta")
        assert parameter_counts(c)["total"] > 0


def test_cli_dry_run_and_errors(toy_recipe_file):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "avgkit", *args], capture_output=True, text=True)

    ok = run("train", str(toy_recipe_file), "--dry-run", "train.steps=5")
    assert ok.returncode == 0, ok.stderr
    assert "steps: 5" in ok.stdout and "non-embedding" in ok.stdout
    bad = run("train", str(toy_recipe_file), "--dry-run", "conditioner.modulat=1")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    missing = run("train", "no-such-recipe-xyz")
    assert missing.returncode == 2 and "no recipe named" in missing.stderr


def test_recipes_validate_checks_every_file_and_names_overrides(tmp_path):
    import subprocess
    import sys

    (tmp_path / "empty.yaml").write_text("")
    run = subprocess.run([sys.executable, "-m", "avgkit", "recipes", "validate", str(tmp_path / "empty.yaml"), "digits"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "ok    digits" in run.stdout
    assert "FAIL  " in run.stderr and "1 of 2 recipe(s) failed validation" in run.stderr
    show = subprocess.run([sys.executable, "-m", "avgkit", "recipes", "show", "digits", "train.stpes=4"],
                          capture_output=True, text=True, timeout=120)
    assert show.returncode == 2 and "digits.yaml with train.stpes=4: unknown key 'train.stpes'" in show.stderr


def test_unreadable_recipe_files_are_one_line_errors(tmp_path):
    from avgkit.recipe import read_yaml

    for name, data, words in (("bin.yaml", b"\x00\xff\xfe", "is not UTF-8 text"),
                              ("date.yaml", b"a: 2020-13-01\n", "is not valid YAML"),
                              ("ctrl.yaml", b"a: \x01b\n", "is not valid YAML")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AvgkitError, match=words) as info:
            read_yaml(tmp_path / name)
        assert "\n" not in str(info.value)


def test_a_recipe_name_wins_over_a_folder_of_that_name_unless_a_path_is_meant(tmp_path, monkeypatch):
    from avgkit.recipe import find_recipe, packaged_recipes

    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()  # e.g. a run folder
    assert find_recipe("digits") == packaged_recipes()["digits"]
    with pytest.raises(AvgkitError, match=r"^digits is a folder, not a recipe file; pass a recipe's .yaml file"):
        find_recipe("./digits")
