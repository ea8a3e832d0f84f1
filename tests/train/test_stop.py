"""SIGINT / SIGTERM / SIGUSR1 stop a run at the next step with a complete checkpoint; under torchrun all ranks agree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from train_helpers import subprocess_env, write_recipe

from avgkit.runs import checkpoint as ckpt
from avgkit.runtime.stop import Interrupted, StopSignals
from avgkit.train.report import read_metrics

SECTIONS = dict(
    data={"source": "digits", "store": None},
    train={"steps": 400, "batch_size": 8, "lr": 3e-3, "log_every": 5, "ckpt_every": 1000, "precision": "fp32",
           "device": "cpu"},
    eval={"samples_per_class": 1, "grid_classes": 2},
)


def _wait_for(path, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), "the run never reached its first step"


def test_second_ctrl_c_quits_at_once():
    with StopSignals("stopping") as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.agreed() == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # another SIGTERM changes nothing
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_interrupted_is_one_line_with_the_signal_exit_code():
    err = Interrupted("stopped by SIGTERM", signal.SIGTERM)
    assert err.exit_code == 143 and "\n" not in str(err)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_saves_a_checkpoint_at_the_next_step_then_resume_finishes(registry, tmp_path, sig):
    from train_helpers import random_codes, toy_model, train_cfg

    from avgkit.train.data import StepBatches, TensorCodes
    from avgkit.train.loop import Trainer

    def trainer(callbacks=()):
        batches = StepBatches(TensorCodes(*random_codes(20)), batch_size=8, grad_accum=1, rank=0, world_size=1, seed=0)
        cfg = train_cfg(steps=8, ckpt_every=100, log_every=2)
        return Trainer(toy_model(registry), batches, cfg, run_dir=tmp_path / "run", progress=False,
                       callbacks=callbacks)

    def send(step, record):
        if step == 3:
            os.kill(os.getpid(), sig)

    with pytest.raises(Interrupted, match=rf"stopped by {signal.Signals(sig).name} at step 4 of 8; saved .*"
                                          rf"step-000004; continue with the same command and --resume") as caught:
        trainer([send]).fit()
    assert caught.value.exit_code == 128 + sig
    assert ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints").step == 4
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["step"] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert trainer().fit(resume=True).step == 8


def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, driver):
    # the CLI exits with 128 + the signal and one line; here the driver does the same
    recipe = write_recipe(tmp_path / "r.yaml", **SECTIONS, output_dir=str(tmp_path / "run"))
    pids = tmp_path / "pids"
    pids.mkdir()
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", driver[1],
              str(recipe), "--delay", "0.05", "--pids", str(pids)]
    proc = subprocess.Popen(launch, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(pids / "1.pid", proc, timeout=120)
    time.sleep(0.3)
    os.kill(int((pids / "1.pid").read_text()), signal.SIGUSR1)  # rank 1 only
    out, _ = proc.communicate(timeout=120)
    latest = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert latest is not None and 1 <= latest.step < 400, out[-3000:]
    assert out.count(f"stopped by SIGUSR1 at step {latest.step} of 400") == 2, out[-3000:]
