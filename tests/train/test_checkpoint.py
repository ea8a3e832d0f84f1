"""Checkpoints: round trip, tied weights, atomicity, pruning, clear errors, no pickle."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn
from train_helpers import random_codes, toy_model, train_cfg

from avgkit.errors import AvgkitError
from avgkit.runs import checkpoint as ckpt
from avgkit.train.data import StepBatches, TensorCodes
from avgkit.train.loop import Trainer


def _trainer(registry, run_dir, **kw):
    cfg = train_cfg(**{"steps": 6, "ckpt_every": 3, "ema": 0.9, **kw})
    batches = StepBatches(TensorCodes(*random_codes(20)), batch_size=8, grad_accum=1, rank=0, world_size=1, seed=0)
    return Trainer(toy_model(registry), batches, cfg, run_dir=run_dir, progress=False)


def test_round_trip_continues_identically(registry, tmp_path):
    full = _trainer(registry, tmp_path / "a").fit()
    first = _trainer(registry, tmp_path / "b", steps=3).fit()
    assert first.checkpoint.name == "step-000003" and (first.checkpoint / ckpt.MARKER).is_file()
    resumed = _trainer(registry, tmp_path / "b").fit(resume=True)
    assert [r["loss"] for r in full.records] == [r["loss"] for r in first.records + resumed.records]
    # the run crossed an epoch boundary (20 items, 8 per step) and the loader resumed mid-epoch
    assert json.loads((first.checkpoint / "trainer.json").read_text())["loader"]["position"] == 8
    a, b = (ckpt.load_tensors(r.checkpoint / "ema.safetensors", fix="")[0] for r in (full, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_only_safetensors_and_json_are_written(registry, tmp_path):
    result = _trainer(registry, tmp_path / "run").fit()
    names = sorted(p.name for p in result.checkpoint.iterdir())
    assert names == ["COMPLETE", "ema.safetensors", "model.safetensors", "optimizer.safetensors", "trainer.json"]
    state = json.loads((result.checkpoint / "trainer.json").read_text())
    assert {"torch_cpu", "numpy", "python", "generators"} <= state["rng"].keys()
    assert state["step"] == 6


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.emb.weight


def test_tied_weights_stored_once_and_retied(tmp_path):
    src = _Tied()
    path = tmp_path / "m.safetensors"
    ckpt.save_tensors(path, src.state_dict())
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["emb.weight"]
    dst = _Tied()
    ckpt.load_module_state(dst, path, fix="")
    assert dst.head.weight is dst.emb.weight
    assert torch.equal(dst.emb.weight, src.emb.weight)


def test_unmarked_and_tmp_folders_are_ignored(registry, tmp_path):
    run = tmp_path / "run"
    _trainer(registry, run, steps=3).fit()
    root = run / "checkpoints"
    (root / "step-000006.tmp").mkdir()  # killed while writing
    (root / "step-000009").mkdir()  # killed between rename and marker
    (root / "step-000009" / "model.safetensors").write_bytes(b"garbage")
    assert ckpt.latest_checkpoint(root).step == 3
    resumed = _trainer(registry, run).fit(resume=True)
    assert resumed.records[0]["step"] == 4
    assert not (root / "step-000006.tmp").exists()
    assert [c.step for c in ckpt.list_checkpoints(root)] == [3, 6]


def test_keep_last(registry, tmp_path):
    _trainer(registry, tmp_path / "run", steps=6, ckpt_every=1, keep_last=2).fit()
    assert [c.step for c in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == [5, 6]
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["step-000005", "step-000006"]


def test_corrupt_checkpoint_names_file_and_fix(registry, tmp_path):
    run = tmp_path / "run"
    first = _trainer(registry, run, steps=3).fit()
    (first.checkpoint / "optimizer.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(AvgkitError, match=r"optimizer\.safetensors is unreadable.*delete .*step-000003"):
        _trainer(registry, run).fit(resume=True)
    (first.checkpoint / "model.safetensors").unlink()
    with pytest.raises(AvgkitError, match=r"model\.safetensors is missing"):
        _trainer(registry, run).fit(resume=True)


def test_resume_without_a_checkpoint_is_refused(registry, tmp_path):
    with pytest.raises(AvgkitError, match="holds no complete checkpoint to resume from"):
        _trainer(registry, tmp_path / "run").fit(resume=True)


def test_refuses_to_overwrite_without_resume(registry, tmp_path):
    _trainer(registry, tmp_path / "run", steps=3).fit()
    with pytest.raises(AvgkitError, match="--resume"):
        _trainer(registry, tmp_path / "run").fit()


def test_wrong_model_is_a_one_line_error(registry, tmp_path):
    first = _trainer(registry, tmp_path / "run", steps=3).fit()
    other = toy_model(registry, dim=8)
    with pytest.raises(AvgkitError, match="does not fit this model") as err:
        ckpt.load_model_weights(other, first.checkpoint)
    assert "\n" not in str(err.value)
