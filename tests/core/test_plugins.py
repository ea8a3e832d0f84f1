import inspect
import json
import subprocess
import sys

import pytest

from avgkit import hookspecs
from avgkit.errors import AvgkitError
from avgkit.plugins import PluginManager

FAKE = '''
from pathlib import Path
from pydantic import Field
from avgkit import hookimpl
from avgkit.registry import BackboneConfig, ComponentConfig, ConditionerConfig
from avgkit.testing.toys import ToyGRUBackbone, ToyClassConditioner, ToyPatchTokenizer, ToyPatchConfig
from avgkit.sample.ar import ARSampler, ARSamplerConfig
from avgkit.convert import ConvertedWeights

AVGKIT_API_VERSION = "1.0"
CALLS = []

class NetConfig(BackboneConfig):
    dim: int = 16
    layers: int = 1

@hookimpl
def avgkit_register_backbones(register):
    register("fake-net", ToyGRUBackbone, config=NetConfig, presets={"small": {"dim": 8}})

@hookimpl
def avgkit_register_tokenizers(register):
    register("fake-tok", ToyPatchTokenizer, config=ToyPatchConfig)

@hookimpl
def avgkit_register_conditioners(register):
    from avgkit.testing.toys import ToyClassConfig
    register("fake-cond", ToyClassConditioner, config=ToyClassConfig)

@hookimpl
def avgkit_register_samplers(register):
    register("fake-sampler", ARSampler, config=ARSamplerConfig)

@hookimpl
def avgkit_register_tokenizer_trainers(register):
    register("fake-tok", lambda *a, **k: None, config=ComponentConfig)

@hookimpl
def avgkit_register_metric_loggers(register):
    register("fake-logger", "avgkit.loggers:JsonlLogger", config="avgkit.loggers:JsonlLoggerConfig")

@hookimpl
def avgkit_recipe_dirs():
    return [Path(__file__).parent / "fake_recipes"]

@hookimpl
def avgkit_register_commands(app):
    @app.command("fake-hello")
    def hello():
        print("hello from fake")

@hookimpl
def avgkit_convert_checkpoint(source, state_dict, role, name):
    if source == "fake" and role == "backbone" and name == "fake-net":
        return ConvertedWeights({"w": state_dict["x.w"]}, {"x.w"})
    return None

@hookimpl
def avgkit_checkpoint_formats():
    return ["fake"]
'''


def test_every_hook_is_documented():
    for name in hookspecs.ALL_HOOKS:
        fn = getattr(hookspecs, name)
        doc = inspect.getdoc(fn) or ""
        assert len(doc) > 40, f"hook {name} needs a docstring explaining its contract"
    assert len(hookspecs.ALL_HOOKS) >= 9


def test_fake_plugin_exercises_every_hook(fake_plugin, tmp_path):
    fake_plugin("fakeplug", FAKE)
    (tmp_path / "fake_recipes").mkdir()
    (tmp_path / "fake_recipes" / "fake-recipe.yaml").write_text("name: fake-recipe\n")
    pm = PluginManager()
    info = pm.infos["fakeplug"]
    assert info.version == "9.9.9"
    assert info.registers == {
        "tokenizer": ["fake-tok"], "backbone": ["fake-net"], "conditioner": ["fake-cond"],
        "sampler": ["fake-sampler"], "tokenizer_trainer": ["fake-tok"], "metric_logger": ["fake-logger"],
    }
    assert pm.registry.get("backbone", "fake-net").resolve("small").dim == 8
    assert any(p.name == "fake_recipes" for p in pm.recipe_dirs())
    assert "fake" in pm.checkpoint_formats()
    conv = pm.convert("fake", {"x.w": 1}, "backbone", "fake-net", None)
    assert conv.state_dict == {"w": 1} and conv.consumed == {"x.w"}
    assert pm.convert("fake", {}, "backbone", "other", None) is None
    import typer

    app = typer.Typer()
    pm.register_commands(app)
    assert any(c.name == "fake-hello" for c in app.registered_commands)


def test_duplicate_name_names_both_plugins(fake_plugin):
    fake_plugin("dup_a", FAKE)
    fake_plugin("dup_b", FAKE)
    with pytest.raises(AvgkitError, match=r"registered twice: by plugin 'dup_a' and by plugin 'dup_b'"):
        PluginManager()


def test_api_version_mismatch_is_clear(fake_plugin):
    fake_plugin("oldplug", FAKE.replace('AVGKIT_API_VERSION = "1.0"', 'AVGKIT_API_VERSION = "0.3"'))
    with pytest.raises(AvgkitError, match=r"oldplug.*written for avgkit API 0.3.*AVGKIT_DISABLE_PLUGINS=oldplug"):
        PluginManager()


def test_missing_api_version_is_clear(fake_plugin):
    fake_plugin("noversion", FAKE.replace('AVGKIT_API_VERSION = "1.0"', ""))
    with pytest.raises(AvgkitError, match="does not declare AVGKIT_API_VERSION"):
        PluginManager()


def test_broken_plugin_can_be_disabled(fake_plugin, monkeypatch):
    fake_plugin("brokenplug", "raise RuntimeError('boom')")
    with pytest.raises(AvgkitError, match="brokenplug.*failed to import.*boom"):
        PluginManager()
    monkeypatch.setenv("AVGKIT_DISABLE_PLUGINS", "brokenplug")
    manager = PluginManager()
    assert "brokenplug" not in manager.infos
    with pytest.raises(AvgkitError, match="AVGKIT_DISABLE_PLUGINS=brokenplug is set: is it from a disabled plugin"):
        manager.registry.get("backbone", "brokens-backbone")
    # a misspelt name would leave the plugin on: refused, with the names installed
    monkeypatch.setenv("AVGKIT_DISABLE_PLUGINS", "brokenplugg")
    with pytest.raises(AvgkitError, match="names 'brokenplugg', which is not an installed plugin.*'brokenplug'"):
        PluginManager()


def test_cli_plugins_json_lists_builtin_and_first_party():
    out = subprocess.run([sys.executable, "-m", "avgkit", "plugins", "--json"], capture_output=True, text=True, check=True)
    data = {p["name"]: p for p in json.loads(out.stdout)}
    assert data["avgkit"]["registers"]["sampler"] == ["ar"]
    for name, role, comp in [("mamba", "backbone", "mamba2"), ("adaln", "conditioner", "adaln-group")]:
        if name in data:  # first-party plugins come through entry points only
            assert comp in data[name]["registers"][role]
            assert data[name]["builtin"] is False


def test_plugin_that_raises_while_registering_is_named(fake_plugin):
    fake_plugin("raiser", FAKE.replace('register("fake-net", ToyGRUBackbone', 'raise KeyError("oops"); register("fake-net", ToyGRUBackbone'))
    with pytest.raises(AvgkitError, match=r"plugin 'raiser' failed while registering backbones: KeyError"):
        PluginManager()


def _module(name: str, source: str):
    import types

    module = types.ModuleType(name)
    exec(source, module.__dict__)
    return module


@pytest.mark.parametrize("source, says", [
    ("@hookimpl\ndef avgkit_register_backbone(register):\n    pass\n",
     "implements 'avgkit_register_backbone', which is no avgkit hook (did you mean 'avgkit_register_backbones'?)"),
    ("def avgkit_register_backbones(register):\n    pass\n",
     "defines 'avgkit_register_backbones' without @avgkit.hookimpl"),
])
def test_a_misspelt_or_unmarked_hook_is_refused_at_load(source, says):
    module = _module("typo_plugin", 'from avgkit import hookimpl\nAVGKIT_API_VERSION = "1.0"\n' + source)
    with pytest.raises(AvgkitError) as err:
        PluginManager(entry_points=False, extra=[("typo", module)])
    assert f"plugin 'typo' (typo_plugin) {says}" in str(err.value) and "\n" not in str(err.value)
