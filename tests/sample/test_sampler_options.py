"""A sampler owns its options: a plugin's sampler gets its own options through ``-o`` and ``generate``.

Nothing in the command line or the Python API names the options of the sampler below:
they reach it only through its config, which also judges them.
"""

from __future__ import annotations

import json
import types

import pytest
from pydantic import Field

import avgkit.api as api
from avgkit import hookimpl, plugins
from avgkit.errors import AvgkitError
from avgkit.sample.ar import ARSampler, ARSamplerConfig


class EchoConfig(ARSamplerConfig):
    stride: int = Field(1, ge=1, description="a setting only this sampler knows")


class EchoSampler(ARSampler):
    configs: list[EchoConfig] = []

    def __init__(self, config: EchoConfig) -> None:
        super().__init__(config)
        EchoSampler.configs.append(config)


def _echo_plugin() -> types.ModuleType:
    module = types.ModuleType("echo_plugin")
    module.AVGKIT_API_VERSION = "1.1"

    @hookimpl
    def avgkit_register_samplers(register):
        register("echo", EchoSampler, config=EchoConfig)

    module.avgkit_register_samplers = avgkit_register_samplers
    return module


@pytest.fixture
def with_echo():
    plugins.reset(plugins.PluginManager(entry_points=False, extra=[("echo", _echo_plugin())]))
    EchoSampler.configs.clear()
    yield
    plugins.reset(plugins.PluginManager(entry_points=False))


def test_generate_passes_a_plugin_samplers_own_options(toy_run, with_echo):
    gen = api.load(toy_run, device="cpu", sampler="echo")
    codes = gen.sample_codes([1, 2], n_per_class=2, seed=3, stride=3, top_k=4)
    assert codes.shape[0] == 4
    assert EchoSampler.configs[-1].stride == 3 and EchoSampler.configs[-1].top_k == 4
    with pytest.raises(AvgkitError, match="sampler 'echo'.*strid.*did you mean 'stride'"):
        gen.sample_codes([1], strid=3)
    with pytest.raises(AvgkitError, match="unknown component|no sampler|sampler 'ecko'"):
        api.load(toy_run, device="cpu", sampler="ecko")


def test_the_command_line_passes_them_with_dash_o(toy_run, tmp_path, cli, with_echo):
    out = tmp_path / "s"
    code, _, err = cli("sample", str(toy_run), "--sampler", "echo", "-o", "stride=4", "-o", "cfg_schedule=linear",
                       "--top-k", "5", "--classes", "1", "--per-class", "2", "--device", "cpu", "--out", str(out),
                       "--quiet", "--no-png")
    assert code == 0, err
    record = json.loads((out / "sampling.json").read_text())["sampler"]
    assert record["name"] == "echo" and record["stride"] == 4 and record["cfg_schedule"] == "linear"
    assert record["top_k"] == 5  # a shortcut flag is just another option
    code, _, err = cli("sample", str(toy_run), "--sampler", "echo", "-o", "stride=0", "--classes", "1",
                       "--device", "cpu", "--out", str(tmp_path / "bad"), "--quiet")
    assert code == 2 and "stride" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("sample", str(toy_run), "-o", "top_k=3", "--top-k", "5", "--classes", "1", "--device", "cpu",
                       "--out", str(tmp_path / "twice"), "--quiet")
    assert code == 2 and "given twice" in err
