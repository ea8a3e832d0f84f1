"""The plugin guide (docs/plugins.md) is true: its code blocks are the example plugin's files or run.

* a Python block headed ``# avgkit_window_mlp/<file>.py`` is that file of
  docs/examples/minimal_plugin, word for word (whose own tests run the conformance
  suite, see test_example_plugin.py);
* every other Python block is run, in order, in one namespace, with the example
  importable: the guide's generation loop, modulation arithmetic, conformance call and
  converter all execute;
* the TOML block is part of the example's pyproject.toml, and the YAML blocks are
  valid component references and recipes once the example plugin is registered.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "plugins.md"
EXAMPLE = ROOT / "docs" / "examples" / "minimal_plugin"
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)
_FILE = re.compile(r"^# (avgkit_window_mlp/[\w/]+\.py)\n")


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in _FENCE.findall(GUIDE.read_text()) if kind == lang]


def test_file_blocks_are_the_example_files():
    files = [b for b in _blocks("python") if _FILE.match(b)]
    assert {_FILE.match(b).group(1) for b in files} >= {"avgkit_window_mlp/plugin.py", "avgkit_window_mlp/backbone.py"}
    for block in files:
        name = _FILE.match(block).group(1)
        assert block[_FILE.match(block).end():] == (EXAMPLE / name).read_text(), (
            f"docs/plugins.md shows {name} differently from docs/examples/minimal_plugin/{name}"
        )


def test_toml_block_is_in_the_example_pyproject():
    (block,) = _blocks("toml")
    lines = set((EXAMPLE / "pyproject.toml").read_text().splitlines())
    for line in block.splitlines():
        assert not line.strip() or line in lines, f"guide's pyproject line {line!r} is not in the example"


def test_python_blocks_run(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    runnable = [b for b in _blocks("python") if not _FILE.match(b)]
    assert len(runnable) >= 5
    namespace: dict = {"__name__": "plugin_guide"}
    for i, block in enumerate(runnable):
        try:
            exec(compile(block, f"docs/plugins.md python block {i}", "exec"), namespace)
        except Exception as err:  # name the block
            raise AssertionError(f"docs/plugins.md python block {i} failed: {type(err).__name__}: {err}\n{block}") from err
    assert namespace["TestWindowMLP"].vocab_size == 16  # the suite subclass was defined


@pytest.fixture
def example_registered(monkeypatch):
    """The plugin manager with the example plugin registered, as if installed."""
    from importlib import metadata

    from avgkit import plugins

    monkeypatch.syspath_prepend(str(EXAMPLE))
    import avgkit_window_mlp.plugin as example

    if any(ep.name == "window-mlp" for ep in metadata.entry_points(group="avgkit")):
        monkeypatch.setenv("AVGKIT_DISABLE_PLUGINS", "window-mlp")  # pip's egg-info there: use this copy only
    manager = plugins.PluginManager(extra=[("window-mlp", example)])
    plugins.reset(manager)
    yield manager
    plugins.reset()


def test_yaml_blocks_name_the_example(example_registered, tmp_path):
    from avgkit.build import build, parameter_counts
    from avgkit.recipe import ComponentRef, load_recipe

    blocks = _blocks("yaml")
    assert len(blocks) >= 2
    for block in blocks:
        raw = yaml.safe_load(block)
        if "base" not in raw:  # a component line
            ref = ComponentRef.model_validate(raw["backbone"])
            example_registered.registry.get("backbone", ref.name).resolve(ref.preset, ref.options)
            continue
        # "digits with my backbone": the packaged digits recipe with the example's backbone
        missing = [n for r, n in (("tokenizer", "llamagen-vq"), ("conditioner", "adaln-group"))
                   if n not in example_registered.registry.names(r)]
        if missing:
            pytest.skip(f"the digits recipe needs {missing} (first-party plugins not installed)")
        path = tmp_path / block.splitlines()[0].split()[1].rstrip(":")
        path.write_text(block)
        recipe = load_recipe(str(path))
        digits = load_recipe("digits")
        assert recipe.backbone.name == "window-mlp" and recipe.backbone.preset == "small"
        assert recipe.backbone.options == {} and recipe.tokenizer == digits.tokenizer and recipe.train == digits.train
        assert parameter_counts(build(recipe, device="meta"))["backbone"] > 0
