"""The tensorboard and wandb loggers: against recording fakes always, against the real packages when installed.

The fakes stand in for ``torch.utils.tensorboard.SummaryWriter`` and the ``wandb``
module so the loggers' calls (tags, steps, images, resume id, config) are checked in
every environment; the real-package tests (wandb in offline mode, no network) run
where the ``tensorboard`` / ``wandb`` extras are installed.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avgkit.errors import AvgkitError
from avgkit.loggers import MetricLogger, open_loggers
from avgkit.plugins import PluginManager
from avgkit.recipe import validate_recipe

RECIPE = {"name": "toy", "tokenizer": "toy-patch", "backbone": "toy-gru:tiny",
          "conditioner": {"name": "toy-class", "num_classes": 10}}


def _png(path: Path) -> Path:
    Image.fromarray(np.full((6, 4), 200, np.uint8)).save(path)  # grey: sent as RGB
    return path


@pytest.fixture
def manager():
    import avgkit_loggers.plugin as plugin

    return PluginManager(entry_points=False, extra=[("loggers", plugin)])


def _open(manager, tmp_path, *loggers):
    recipe = validate_recipe({**RECIPE, "loggers": list(loggers)})
    return open_loggers(recipe, tmp_path, manager.registry)


def test_registration_imports_neither_tensorboard_nor_wandb(monkeypatch):
    for name in ("avgkit_loggers.tensorboard", "avgkit_loggers.wandb_logger"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import avgkit_loggers.plugin as plugin

    manager = PluginManager(entry_points=False, extra=[("loggers", plugin)])
    names = manager.registry.names("metric_logger")
    assert {"jsonl", "tensorboard", "wandb"} <= set(names)
    assert not any(m in sys.modules for m in ("avgkit_loggers.tensorboard", "avgkit_loggers.wandb_logger"))


class FakeWriter:
    instances: list = []

    def __init__(self, log_dir, flush_secs):
        self.log_dir, self.calls = log_dir, []
        FakeWriter.instances.append(self)

    def __getattr__(self, name):
        return lambda *args, **kw: self.calls.append((name, args, kw))


def test_tensorboard_logger_calls(manager, tmp_path, monkeypatch):
    import avgkit_loggers.tensorboard as tb

    monkeypatch.setattr(tb, "summary_writer_class", lambda: FakeWriter)
    loggers = _open(manager, tmp_path, "tensorboard")
    loggers.log_metrics(10, {"step": 10, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 99.0}, "train/")
    loggers.log_images(10, {"samples": _png(tmp_path / "g.png")})
    loggers.close()
    writer = FakeWriter.instances[-1]
    assert writer.log_dir == str(tmp_path / "tensorboard")
    scalars = {args[0]: (args[1], args[2]) for name, args, _ in writer.calls if name == "add_scalar"}
    assert scalars == {"train/loss": (2.5, 10), "train/lr": (1e-3, 10), "train/grad_norm": (0.5, 10),
                       "train/tokens_per_s": (99.0, 10)}
    (image,) = [(args, kw) for name, args, kw in writer.calls if name == "add_image"]
    assert image[0][0] == "samples" and image[0][1].shape == (6, 4, 3) and image[0][2] == 10
    assert image[1] == {"dataformats": "HWC"}
    assert [name for name, _, _ in writer.calls][-2:] == ["flush", "close"]
    assert any(name == "add_text" and args[0] == "recipe" for name, args, _ in writer.calls)


def _fake_wandb(monkeypatch):
    calls: list = []

    class Run:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    module = types.ModuleType("wandb")
    module.init = lambda **kw: calls.append(("init", kw)) or Run()
    module.Image = lambda path: ("image", path)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_wandb_logger_calls_and_resume_id(manager, tmp_path, monkeypatch):
    calls = _fake_wandb(monkeypatch)
    loggers = _open(manager, tmp_path, {"name": "wandb", "project": "p", "mode": "offline", "tags": ["t"]})
    loggers.log_metrics(3, {"step": 3, "loss": 1.0, "note": "text", "nan": float("nan")}, "train/")
    loggers.log_images(3, {"samples": _png(tmp_path / "g.png"), "missing": tmp_path / "nope.png"})
    loggers.close()
    loggers.close()  # once only
    init = calls[0][1]
    assert init["project"] == "p" and init["mode"] == "offline" and init["name"] == "toy" and init["tags"] == ["t"]
    assert init["dir"] == str(tmp_path) and init["config"]["name"] == "toy" and init["resume"] == "allow"
    assert calls[1:] == [("log", {"train/loss": 1.0}, 3), ("log", {"samples": ("image", str(tmp_path / "g.png"))}, 3),
                         ("finish",)]
    # a resumed run continues the same wandb run
    _open(manager, tmp_path, "wandb")
    assert calls[-1][1]["id"] == init["id"] == (tmp_path / "wandb-run-id.txt").read_text().strip()


def test_a_missing_package_is_one_line(manager, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(AvgkitError, match=r"the wandb logger needs the wandb package .*avgkit-loggers\[wandb\]"):
        _open(manager, tmp_path, "wandb")


def test_a_failing_tracker_is_named(manager, tmp_path, monkeypatch):
    calls = _fake_wandb(monkeypatch)
    loggers = _open(manager, tmp_path, "wandb")
    loggers.loggers[0][1].run.log = lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down"))
    with pytest.raises(AvgkitError, match=r"metric logger 'wandb' failed in log_metrics: ConnectionError: down"):
        loggers.log_metrics(1, {"loss": 1.0})
    assert calls


def test_real_tensorboard_writes_readable_events(manager, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loggers = _open(manager, tmp_path, "tensorboard")
    assert isinstance(loggers.loggers[0][1], MetricLogger)
    for step in (1, 2):
        loggers.log_metrics(step, {"loss": 3.0 / step}, "train/")
    loggers.log_images(2, {"samples": _png(tmp_path / "g.png")})
    loggers.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 3.0), (2, 1.5)]
    assert events.Images("samples")[0].step == 2


def test_real_wandb_offline(manager, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    loggers = _open(manager, tmp_path, {"name": "wandb", "mode": "offline", "project": "avgkit-test"})
    loggers.log_metrics(1, {"loss": 2.0}, "train/")
    loggers.log_images(1, {"samples": _png(tmp_path / "g.png")})
    loggers.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
