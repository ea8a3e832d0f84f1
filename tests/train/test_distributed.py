"""Two gloo processes (torchrun) train exactly like one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from train_helpers import subprocess_env, write_recipe

from avgkit.recipe import load_recipe
from avgkit.train.pipeline import run_recipe
from avgkit.train.report import read_metrics

SECTIONS = dict(
    data={"source": "digits", "store": None},
    train={
        "steps": 12,
        "batch_size": 8,
        "grad_accum": 2,
        "lr": 3e-3,
        "log_every": 1,
        "ckpt_every": 6,
        "precision": "fp32",
        "device": "cpu",
    },
    eval={"samples_per_class": 1, "grid_classes": 2},
)


def test_two_processes_match_one(tmp_path, builtin_plugins):
    two = write_recipe(tmp_path / "two.yaml", **SECTIONS, output_dir=str(tmp_path / "two"))
    one = write_recipe(tmp_path / "one.yaml", **SECTIONS, output_dir=str(tmp_path / "one"))
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "avgkit",
        "train",
        str(two),
    ]
    ddp = subprocess.Popen(launch, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_recipe(load_recipe(str(one)), progress=False)  # one process, meanwhile
    out, _ = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, out[-3000:]

    a = read_metrics(tmp_path / "one" / "metrics.jsonl")
    b = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 13))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-6, rel=0)
    assert [r["grad_norm"] for r in b] == pytest.approx([r["grad_norm"] for r in a], abs=1e-5, rel=0)
    # only rank 0 wrote: one metrics line per step, one set of checkpoints
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-000006", "step-000012"]
    assert "2 x cpu" in out
