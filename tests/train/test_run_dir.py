"""One writer per run directory, no debris from failed runs, a fully resolved stored recipe, a clear --resume."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import yaml
from train_helpers import subprocess_env, toy_recipe

from avgkit.errors import AvgkitError
from avgkit.runs.lock import FolderLock, LockedError
from avgkit.train.pipeline import run_recipe

TRAIN = {"steps": 2, "batch_size": 8, "lr": 3e-3, "log_every": 1, "ckpt_every": 2, "device": "cpu"}
HOLD = ("import sys, time\nfrom avgkit.runs.lock import FolderLock\nFolderLock(sys.argv[1]).acquire()\n"
        "print('held', flush=True)\ntime.sleep(120)\n")


def _recipe(tmp_path, **kw):
    base = dict(data={"source": "digits", "store": None}, train=TRAIN, eval={"samples_per_class": 1, "grid_classes": 2},
                output_dir=str(tmp_path / "run"))
    return toy_recipe(**{**base, **kw})


def test_a_second_writer_is_refused_and_a_killed_one_is_detected(tmp_path, builtin_plugins, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=subprocess_env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"run {run} is being written by pid {holder.pid} on .*, since .*; wait"):
            run_recipe(_recipe(tmp_path), progress=False)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing else was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    # the kernel released the lock of the killed process: the next writer takes over and says so
    lock = FolderLock(run).acquire()
    assert lock.stale is not None and f"pid {holder.pid}" in lock.stale
    assert "ended without finishing" in capsys.readouterr().err
    lock.release()
    assert FolderLock(run).acquire().stale is None  # a clean release leaves no record


def test_a_failed_run_leaves_no_debris(tmp_path, builtin_plugins):
    recipe = _recipe(tmp_path, eval={"samples_per_class": 1, "classifier": "none"},
                     data={"source": str(tmp_path / "missing"), "store": None})
    with pytest.raises(AvgkitError):
        run_recipe(recipe, progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_without_a_checkpoint_is_refused(tmp_path, builtin_plugins):
    with pytest.raises(AvgkitError, match="holds no complete checkpoint to resume from; run without --resume"):
        run_recipe(_recipe(tmp_path), resume=True, progress=False)
    assert not (tmp_path / "run").exists()


def test_the_stored_recipe_is_fully_resolved(tmp_path, builtin_plugins):
    from avgkit.build import build
    from avgkit.runs.loading import read_recipe, resolve_checkpoint

    run_recipe(_recipe(tmp_path), progress=False)
    stored = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert stored["train"]["ema"] is None and "sample_every" in stored["train"]  # null defaults kept
    assert stored["backbone"]["dim"] == 16 and "layers" in stored["backbone"] and "name" in stored["sampler"]
    assert set(stored["tokenizer"]) > {"name", "levels", "image_size"}  # every option, defaults included
    again = read_recipe(resolve_checkpoint(tmp_path / "run"))
    assert build(again, device="meta").configs["backbone"] == build(_recipe(tmp_path), device="meta").configs["backbone"]


def test_a_plugin_value_error_is_one_line(builtin_plugins, monkeypatch):
    from avgkit.build import build
    from avgkit.testing import toys

    def refuse(self, config):
        raise ValueError("expand*d_model (200) must be\na multiple of headdim (32)")

    monkeypatch.setattr(toys.ToyGRUBackbone, "__init__", refuse)
    with pytest.raises(AvgkitError, match=r"^backbone 'toy-gru' cannot be built with these options: expand\*d_model "
                                          r"\(200\) must be a multiple of headdim \(32\); change them") as err:
        build(toy_recipe(), device="meta")
    assert "\n" not in str(err.value)
