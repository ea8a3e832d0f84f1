"""A run killed with SIGKILL and resumed gives the losses of an uninterrupted run, bit for bit."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file
from train_helpers import subprocess_env, write_recipe

from avgkit.recipe import load_recipe
from avgkit.train.pipeline import run_recipe
from avgkit.train.report import read_metrics

SECTIONS = dict(
    data={"source": "digits", "store": None},  # 1438 items, 8 per step: step 10 is mid-epoch
    train={
        "steps": 30,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_steps": 5,
        "schedule": "cosine",
        "log_every": 1,
        "ckpt_every": 10,
        "ema": 0.9,
        "precision": "fp32",
        "device": "cpu",
    },
    eval={"samples_per_class": 1, "grid_classes": 2},
)


def test_sigkill_then_resume_is_bit_identical(tmp_path, driver, builtin_plugins):
    env = subprocess_env()
    whole = write_recipe(tmp_path / "whole.yaml", **SECTIONS, output_dir=str(tmp_path / "whole"))
    cut = write_recipe(tmp_path / "cut.yaml", **SECTIONS, output_dir=str(tmp_path / "cut"))
    victim = subprocess.Popen(
        [*driver, str(cut), "--delay", "0.15"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    run_recipe(load_recipe(str(whole)), progress=False)  # the uninterrupted reference, meanwhile
    marker = tmp_path / "cut" / "checkpoints" / "step-000010" / "COMPLETE"
    deadline = time.monotonic() + 50
    while not marker.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), "the run never wrote its step-10 checkpoint"
    time.sleep(0.3)  # let it get a few steps past the checkpoint
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    logged = [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert 10 <= max(logged) < 30, "killed too late to test anything"

    resumed = subprocess.run(
        [sys.executable, "-m", "avgkit", "train", str(cut), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr

    a = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    b = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 31))  # records past the checkpoint were replaced
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]
    for name in ("model", "ema", "optimizer"):
        a, b = (
            load_file(tmp_path / run / "checkpoints" / "step-000030" / f"{name}.safetensors")
            for run in ("whole", "cut")
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
