"""Shared test configuration: CPU-only determinism, GPU tests skipped without CUDA."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def builtin_plugins():
    """Make the process-wide plugin manager see avgkit's built-ins only (toy components, the AR sampler)."""
    from avgkit import plugins

    plugins.reset(plugins.PluginManager(entry_points=False))
    yield
    plugins.reset()


@pytest.fixture
def fake_plugin(tmp_path, monkeypatch):
    """Install a plugin module through a real ``avgkit`` entry point (a dist-info on sys.path).

    Returns ``make(name, source)``: writes module ``<name>`` with ``source`` and
    registers it as entry point ``<name>``; the plugin manager is reset afterwards.
    """
    from avgkit import plugins

    monkeypatch.syspath_prepend(str(tmp_path))

    def make(name: str, source: str, version: str = "9.9.9") -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        dist = tmp_path / f"{name}-{version}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (dist / "entry_points.txt").write_text(f"[avgkit]\n{name} = {name}\n")
        sys.modules.pop(name, None)

    plugins.reset()
    yield make
    plugins.reset()


@pytest.fixture
def cli(capsys):
    """``cli(*args) -> (exit_code, stdout, stderr)``, running ``avgkit`` in this process."""
    from avgkit.cli.app import main

    def run(*args: str) -> tuple[int, str, str]:
        old, sys.argv = sys.argv, ["avgkit", *args]
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = old
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def toy_recipe_file(tmp_path) -> Path:
    p = tmp_path / "toy.yaml"
    p.write_text(textwrap.dedent("""\
        name: toy
        description: toy components only
        tokenizer: toy-patch
        backbone: toy-gru:tiny
        conditioner: {name: toy-class, num_classes: 10}
        sampler: {name: ar, cfg_scale: 2.0, top_k: 5}
        """))
    return p
