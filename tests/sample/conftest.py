"""Fixtures for the sampling tests: a toy run directory (the CLI runner ``cli`` is in tests/conftest.py)."""

from __future__ import annotations

import shutil

import pytest
import torch
from sample_helpers import make_run_dir


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Toy models are tiny: one thread avoids thread hand-off costs that dominate such ops."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True, scope="module")
def builtin_plugins_only():
    """Toy components are built in: installed plugins (and their import problems) stay out."""
    from avgkit import plugins

    plugins.reset(plugins.PluginManager(entry_points=False))
    yield
    plugins.reset()


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A run directory with two complete checkpoints (steps 3 and 5), EMA weights included."""
    return make_run_dir(tmp_path_factory.mktemp("run") / "toy", steps=(3, 5), ema=True)


@pytest.fixture
def run_copy(toy_run, tmp_path):
    """A private copy of the toy run, for tests that damage it."""
    dst = tmp_path / "toy"
    shutil.copytree(toy_run, dst)
    return dst
