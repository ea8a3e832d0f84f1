"""Fixtures for the training-engine tests: toy components only, no installed plugin."""

from __future__ import annotations

import sys

import pytest
from train_helpers import DRIVER


@pytest.fixture
def registry():
    """A registry with avgkit's built-ins only (installed plugins stay out)."""
    from avgkit.plugins import PluginManager

    return PluginManager(entry_points=False).registry


@pytest.fixture
def driver(tmp_path) -> list[str]:
    path = tmp_path / "driver.py"
    path.write_text(DRIVER)
    return [sys.executable, str(path)]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and steadiest on a busy machine) on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fake_vq_plugins():
    """The built-ins plus a tokenizer with a weights file and a registered trainer (``fake-vq``)."""
    import fake_tokenizer_plugin

    from avgkit import plugins

    plugins.reset(plugins.PluginManager(entry_points=False, extra=[("fakevq", fake_tokenizer_plugin)]))
    fake_tokenizer_plugin.TRAIN_CALLS.clear()
    yield fake_tokenizer_plugin
    plugins.reset()
