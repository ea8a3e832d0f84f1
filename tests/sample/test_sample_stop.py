"""Ctrl-C (or SIGTERM/SIGUSR1) during ``avgkit sample`` keeps every finished shard and says how to go on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["AVGKIT_DISABLE_PLUGINS"] = ",".join(sorted({ep.name for ep in metadata.entry_points(group="avgkit")}))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _sample(run: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "avgkit", "sample", str(run), "--classes", "all", "--per-class", "12",
            "--batch-size", "1", "--shard-size", "2", "--device", "cpu", "--no-png", "--out", str(out)]


def test_a_signal_stops_sampling_at_a_shard_boundary_and_the_rerun_finishes(toy_run, tmp_path):
    out = tmp_path / "job"
    proc = subprocess.Popen(_sample(toy_run, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    shards = out / "shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(shards.glob("*.npz"))) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, f"finished before it could be stopped:\n{proc.communicate()[1]}"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "run the same command again" in err
    kept = len(list(shards.glob("*.npz")))
    assert 2 <= kept < 60 and not (out / "samples.npz").exists()

    done = subprocess.run(_sample(toy_run, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    whole = tmp_path / "whole"
    straight = subprocess.run(_sample(toy_run, whole), env=_env(), capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    a, b = np.load(out / "samples.npz"), np.load(whole / "samples.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
