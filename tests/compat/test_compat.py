"""Folders written by an earlier avgkit still load, sample and resume bit-identically.

``fixture/`` was written by ``make_fixture.py`` with avgkit 0.1.0 before its run
directory and checkpoint code moved (see that script): a toy AR run on the built-in
digits and a tiny LlamaGen tokenizer's work folder. ``fixture/expected.json`` is what that
code produced from them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from make_fixture import VQ, VQ_TRAIN, sample_tokens, tensor_digest, vq_images

from avgkit.recipe import read_yaml, validate_recipe

FIXTURE = Path(__file__).resolve().parent / "fixture"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)
    return run


def test_an_old_run_samples_the_same_tokens(old_run: Path, builtin_plugins) -> None:
    assert sample_tokens(old_run) == EXPECTED["run_samples"]


def test_an_old_run_resumes_bit_identically(old_run: Path, builtin_plugins) -> None:
    from avgkit.train.pipeline import run_recipe

    shutil.rmtree(old_run / "checkpoints" / "step-000008")  # as if stopped after step 4
    recipe = validate_recipe({**read_yaml(old_run / "recipe.yaml"), "output_dir": str(old_run)})
    run_recipe(recipe, resume=True, progress=False)
    step8 = old_run / "checkpoints" / "step-000008"
    assert tensor_digest(step8 / "model.safetensors") == EXPECTED["run_step8_model"]
    assert tensor_digest(step8 / "ema.safetensors") == EXPECTED["run_step8_ema"]


def test_an_old_tokenizer_work_folder_loads_and_resumes(tmp_path: Path) -> None:
    pytest.importorskip("avgkit_llamagen")
    from avgkit_llamagen.config import VQConfig
    from avgkit_llamagen.loading import load_tokenizer
    from avgkit_llamagen.train import VQTrainConfig, train_vq

    work = tmp_path / "tokenizer-work"
    shutil.copytree(FIXTURE / "tokenizer-work", work)
    with torch.no_grad():
        codes = load_tokenizer(work / EXPECTED["tokenizer_weights"]).encode(vq_images()[:4])
    assert codes.tolist() == EXPECTED["tokenizer_codes"]
    for name in ("step-00000004.safetensors", "step-00000004.json"):  # as if stopped after step 2
        (work / "checkpoints" / name).unlink()
    (work / EXPECTED["tokenizer_weights"]).unlink()
    train_vq(VQConfig(**VQ), VQTrainConfig(**VQ_TRAIN), vq_images(), work, progress=False)
    # resumed from the old layout's step 2: the same final weights as the run that never stopped
    ours = work / EXPECTED["tokenizer_weights"]
    assert tensor_digest(ours) == tensor_digest(FIXTURE / "tokenizer-work" / EXPECTED["tokenizer_weights"])
