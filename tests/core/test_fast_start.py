"""Starting avgkit imports nothing heavy: registration records names, options and lazy factories."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from avgkit.errors import AvgkitError
from avgkit.registry import ComponentSpec, Registry

_PROBE = """
import json, sys
from avgkit.cli.app import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
else:
    code = 0
heavy = [m for m in ("torch", "triton", "numpy", "zarr", "matplotlib") if m in sys.modules]
print("\\n@@" + json.dumps({"code": code, "heavy": heavy}))
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["ls", "backbones"], ["ls", "conditioners"], ["ls", "loggers"],
                                  ["plugins"], ["recipes", "ls"]])
def test_light_commands_do_not_import_torch(args):
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    body, _, tail = out.stdout.rpartition("\n@@")
    result = json.loads(tail)
    assert result["code"] in (0, None), out.stderr
    assert body.strip(), f"avgkit {' '.join(args)} printed nothing"
    assert result["heavy"] == [], f"avgkit {' '.join(args)} imported {result['heavy']}"


def test_version_lists_avgkit_plugins_torch_and_triton():
    out = subprocess.run([sys.executable, "-m", "avgkit", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    from avgkit import __version__
    from avgkit.hookspecs import API_VERSION

    assert lines["avgkit"] == __version__ and lines["plugin API"] == API_VERSION
    assert "torch" in lines and "triton" in lines
    from importlib import metadata

    for ep in metadata.entry_points(group="avgkit"):
        assert f"plugin {ep.name}" in lines


def test_lazy_factory_and_config_are_imported_on_first_use():
    sys.modules.pop("avgkit_lazy_probe", None)
    reg = Registry()
    reg.register_callback("backbone", "probe")(
        "toy", "avgkit.testing.toys:ToyGRUBackbone", config="avgkit.testing.toys:ToyGRUConfig", presets={"t": {"dim": 8}}
    )
    spec = reg.get("backbone", "toy")
    assert not spec.loaded
    cfg = spec.resolve("t", {"layers": 1, "vocab_size": 16, "num_tokens": 4})
    from avgkit.testing.toys import ToyGRUBackbone, ToyGRUConfig

    assert spec.config is ToyGRUConfig and cfg.dim == 8
    assert isinstance(spec.factory(cfg), ToyGRUBackbone) and spec.loaded


@pytest.mark.parametrize(
    "factory, config, message",
    [
        ("no_such_module_xyz:Net", "avgkit.testing.toys:ToyGRUConfig", r"plugin 'probe', backbone 'x': importing 'no_such_module_xyz' failed"),
        ("avgkit.testing.toys:Nope", "avgkit.testing.toys:ToyGRUConfig", r"'avgkit.testing.toys' has no attribute 'Nope'"),
        ("avgkit.testing.toys:ToyGRUBackbone", "avgkit.testing.toys:ToyGRUBackbone", r"needs a pydantic config class"),
    ],
)
def test_lazy_reference_errors_name_the_plugin(factory, config, message):
    spec = ComponentSpec("backbone", "x", factory, config, plugin="probe")
    with pytest.raises(AvgkitError, match=message):
        spec.factory(spec.config())


def test_malformed_reference_is_refused_at_registration():
    reg = Registry()
    with pytest.raises(AvgkitError, match=r"plugin 'probe', backbone 'x': 'avgkit.testing.toys' is not a 'package.module:attr'"):
        reg.register_callback("backbone", "probe")("x", "avgkit.testing.toys", config="avgkit.testing.toys:ToyGRUConfig")


def test_first_party_plugins_register_lazily():
    from avgkit.plugins import PluginManager

    pm = PluginManager()
    for role in ("backbone", "conditioner", "sampler", "tokenizer", "metric_logger"):
        for spec in pm.registry.specs(role):
            if spec.plugin in ("avgkit", "mamba", "adaln", "llamagen", "transformer", "loggers"):
                assert isinstance(spec.factory_ref, str), f"{spec.who} imports its factory at registration"


def test_newer_minor_api_is_refused(fake_plugin):
    from avgkit.plugins import PluginManager

    fake_plugin("newplug", 'from avgkit import hookimpl\nAVGKIT_API_VERSION = "1.99"\n')
    with pytest.raises(AvgkitError, match=r"newplug.*written for avgkit API 1.99"):
        PluginManager()
