"""Folders written by an earlier avgkit still load, sample and resume to the same weights.

``fixture/`` was written by ``make_fixture.py`` with avgkit 0.1.0 before its run
directory and checkpoint code moved (see that script): a toy AR run on the built-in
digits and a tiny LlamaGen tokenizer's work folder. ``fixture/expected.json`` is what that
code produced from them.

A resumed run's weights are bit-identical to the fixture's on a CPU like the one that wrote
it. On another CPU the BLAS kernels behind the training steps may round the last bit
differently (MKL picks its kernels by CPU model), so there they must agree within a tenth
of one optimizer step (the learning rate): a resume that lost the optimizer's moments or
replayed a batch moves every weight by about a step. On an AMX machine the AR run's
weights differed by at most 3e-8 (lr 3e-3) and the tokenizer's by 2e-5 (lr 3e-3: AdamW
turns the rounding noise in gradients that are zero in exact arithmetic, such as an
attention key's bias, into steps of its own).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from make_fixture import TRAIN, VQ, VQ_TRAIN, sample_tokens, tensor_digest, vq_images
from safetensors.torch import load_file

from avgkit.recipe import read_yaml, validate_recipe

FIXTURE = Path(__file__).resolve().parent / "fixture"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
RUN_LR = TRAIN["lr"]


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)
    return run


def test_an_old_run_samples_the_same_tokens(old_run: Path, builtin_plugins) -> None:
    assert sample_tokens(old_run) == EXPECTED["run_samples"]


def assert_same_weights(ours: Path, theirs: Path, digest: str, lr: float) -> None:
    """``ours`` holds the tensors of ``theirs`` (whose own digest must be ``digest``): the same bits, or on another
    CPU within a tenth of a step of learning rate ``lr`` (module docstring)."""
    atol = 0.1 * lr
    assert tensor_digest(theirs) == digest, f"the fixture {theirs} changed"
    if tensor_digest(ours) == digest:
        return
    a, b = load_file(str(ours)), load_file(str(theirs))
    assert sorted(a) == sorted(b)
    for name, want in b.items():
        got = a[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        err = float((got.double() - want.double()).abs().max())
        assert err <= atol, f"{name}: resumed weights differ by {err:.2e} (more than rounding, {atol:g})"


def test_resume_comparison_tells_a_lost_step_from_rounding(tmp_path: Path) -> None:
    """The tolerance above accepts last-bit differences and rejects one optimizer step's worth."""
    lr = RUN_LR
    from safetensors.torch import save_file

    theirs = FIXTURE / "run" / "checkpoints" / "step-000008" / "model.safetensors"
    weights = load_file(str(theirs))
    rounded = {k: (v.view(torch.int32) + 1).view(torch.float32) if v.dtype == torch.float32 else v
               for k, v in weights.items()}  # one ulp on every weight
    save_file(rounded, str(tmp_path / "rounded.safetensors"))
    assert_same_weights(tmp_path / "rounded.safetensors", theirs, EXPECTED["run_step8_model"], lr)
    stepped = dict(weights)
    name = sorted(weights)[0]
    stepped[name] = weights[name] + lr  # one weight tensor one step off
    save_file(stepped, str(tmp_path / "stepped.safetensors"))
    with pytest.raises(AssertionError, match="resumed weights differ"):
        assert_same_weights(tmp_path / "stepped.safetensors", theirs, EXPECTED["run_step8_model"], lr)


def test_an_old_run_resumes_to_the_same_weights(old_run: Path, builtin_plugins) -> None:
    from avgkit.train.pipeline import run_recipe

    shutil.rmtree(old_run / "checkpoints" / "step-000008")  # as if stopped after step 4
    recipe = validate_recipe({**read_yaml(old_run / "recipe.yaml"), "output_dir": str(old_run)})
    run_recipe(recipe, resume=True, progress=False)
    step8, theirs = old_run / "checkpoints" / "step-000008", FIXTURE / "run" / "checkpoints" / "step-000008"
    for name, digest in (("model", EXPECTED["run_step8_model"]), ("ema", EXPECTED["run_step8_ema"])):
        assert_same_weights(step8 / f"{name}.safetensors", theirs / f"{name}.safetensors", digest, RUN_LR)


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
    theirs = FIXTURE / "tokenizer-work" / EXPECTED["tokenizer_weights"]
    assert_same_weights(work / EXPECTED["tokenizer_weights"], theirs, tensor_digest(theirs), VQ_TRAIN["lr"])
