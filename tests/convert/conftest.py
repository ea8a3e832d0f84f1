"""Conversion tests: the AiM plugins (mamba, adaln) plus a fake VQ tokenizer, nothing else installed."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def aim_plugins():
    """A plugin manager with the built-ins, the AiM plugins and the fake VQ tokenizer."""
    mamba = pytest.importorskip("avgkit_mamba.plugin")
    adaln = pytest.importorskip("avgkit_adaln.plugin")
    from convert_helpers import fake_vq_plugin

    from avgkit import plugins

    extra = [("mamba", mamba), ("adaln", adaln), ("fake-vq", fake_vq_plugin())]
    try:  # the VQ-16 tokenizer, when installed: the size tests then convert vqvae.* too
        import avgkit_llamagen.plugin as llamagen

        extra.append(("llamagen", llamagen))
    except ImportError:
        pass
    manager = plugins.PluginManager(entry_points=False, extra=extra)
    plugins.reset(manager)
    yield manager
    plugins.reset()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
