"""Tokenizer training: exact resume, checkpoints, outputs, optional losses, input checks."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from avgkit_llamagen.checkpoint import completed_steps
from avgkit_llamagen.errors import VQError
from avgkit_llamagen.loading import load_tokenizer
from avgkit_llamagen.perceptual import LPIPS
from avgkit_llamagen.report import reconstruction_report
from avgkit_llamagen.train import BatchOrder, VQTrainConfig, learning_rate, train_preset, train_vq
from llamagen_testutil import smooth_images, tiny_config

IMAGES = smooth_images(24, 16, seed=5)


def quick(**overrides) -> VQTrainConfig:
    values = dict(
        steps=6,
        batch_size=8,
        lr=3e-3,
        warmup_steps=2,
        ema_decay=0.9,
        disc_start=3,
        disc_width=8,
        disc_layers=2,
        log_every=1,
        ckpt_every=3,
        device="cpu",
        threads=1,
    )
    values.update(overrides)
    return VQTrainConfig(**values)


def metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_resumed_run_is_bit_identical(tmp_path):
    cfg = tiny_config()
    full = train_vq(cfg, quick(), IMAGES, tmp_path / "full", progress=False)
    train_vq(cfg, quick(steps=3), IMAGES, tmp_path / "split", progress=False)
    assert completed_steps(tmp_path / "split" / "checkpoints") == [3]
    split = train_vq(cfg, quick(), IMAGES, tmp_path / "split", progress=False)
    a, b = metrics(tmp_path / "full"), metrics(tmp_path / "split")
    assert [m["step"] for m in a] == [1, 2, 3, 4, 5, 6]
    assert a == b  # every loss term of every step, compared exactly
    assert "gen" in a[-1] and "disc" in a[-1] and "gen" not in a[0]  # the GAN joined at step 3
    wa, wb = safetensors.torch.load_file(str(full)), safetensors.torch.load_file(str(split))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # a different seed changes the run, so the equality above is not vacuous
    train_vq(cfg, quick(seed=1, steps=2), IMAGES, tmp_path / "other", progress=False)
    assert metrics(tmp_path / "other")[1]["loss"] != a[1]["loss"]


def test_a_stop_signal_saves_a_checkpoint_and_the_rerun_ends_where_a_straight_run_does(tmp_path, monkeypatch):
    import os
    import signal

    from avgkit_llamagen import train as vq_train

    from avgkit.runtime.stop import Interrupted

    cfg = tiny_config()
    full = train_vq(cfg, quick(), IMAGES, tmp_path / "full", progress=False)
    step = vq_train._Run.step

    def step_then_signal(self, x, i):
        out = step(self, x, i)
        if i == 1:  # during the second step, as a cluster's preemption notice would arrive
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(vq_train._Run, "step", step_then_signal)
    with pytest.raises(Interrupted, match="stopped by SIGTERM at tokenizer step 2 of 6") as stopped:
        train_vq(cfg, quick(), IMAGES, tmp_path / "cut", progress=False)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert completed_steps(tmp_path / "cut" / "checkpoints") == [2]  # not a checkpoint step: saved on the signal
    monkeypatch.setattr(vq_train._Run, "step", step)
    resumed = train_vq(cfg, quick(), IMAGES, tmp_path / "cut", progress=False)
    wa, wb = safetensors.torch.load_file(str(full)), safetensors.torch.load_file(str(resumed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_outputs_and_checkpoint_pruning(tmp_path, capsys):
    cfg = tiny_config()
    train = quick(steps=8, ckpt_every=2, keep_checkpoints=2, disc_start=None, ema_decay=None, log_every=4)
    path = train_vq(cfg, train, IMAGES[:16], tmp_path, eval_images=IMAGES[16:], progress=True)
    assert path == tmp_path / "tokenizer.safetensors"
    assert completed_steps(tmp_path / "checkpoints") == [6, 8]
    assert not list(tmp_path.rglob(".*tmp*"))  # no temporary files left behind
    err = capsys.readouterr()
    assert "step 4/8" in err.err and "step 8/8" in err.err and "held-out: PSNR" in err.out
    report = json.loads((tmp_path / "report.json").read_text())
    model = load_tokenizer(path)
    # the saved weights' report: the reload may pick other CPU kernels, so floats agree to rounding, not bits
    assert report == pytest.approx(reconstruction_report(model, IMAGES[16:]).model_dump(), rel=1e-5)
    assert 0 < report["codes_used"] <= 32 and report["psnr"] > 0
    from PIL import Image

    with Image.open(tmp_path / "reconstructions.png") as picture:
        # 8 eval images, each 16 px scaled x4 to 64 px; originals over reconstructions
        assert picture.size == (8 * 64, 2 * 64)
    # a finished run asked for the same number of steps does no more training
    before = (tmp_path / "metrics.jsonl").read_text()
    train_vq(cfg, train, IMAGES[:16], tmp_path, progress=False)
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_existing_run_is_not_overwritten_and_architecture_checked(tmp_path):
    cfg = tiny_config()
    train_vq(cfg, quick(steps=1, disc_start=None), IMAGES, tmp_path, progress=False)
    with pytest.raises(VQError, match="already holds a training run .*resume=True"):
        train_vq(cfg, quick(steps=2), IMAGES, tmp_path, resume=False, progress=False)
    with pytest.raises(VQError, match="different tokenizer architecture"):
        train_vq(tiny_config(codebook_size=16), quick(steps=2, disc_start=None), IMAGES, tmp_path, progress=False)


def lpips_with_random_weights() -> LPIPS:
    """LPIPS with random VGG features and random non-negative lin weights (as trained ones are)."""
    torch.manual_seed(0)
    lpips = LPIPS()
    for k in range(5):
        getattr(lpips, f"lin{k}").model[1].weight.data.abs_()
    return lpips


def test_perceptual_loss_with_user_weights(tmp_path):
    lpips_state = lpips_with_random_weights().state_dict()
    lin_only = {k: v for k, v in lpips_state.items() if k.startswith("lin")}
    vgg = {f"features.{k.split('.', 2)[2]}": v for k, v in lpips_state.items() if k.startswith("net.")}
    assert len(vgg) == 26  # 13 conv layers
    safetensors.torch.save_file(lin_only, str(tmp_path / "lin.safetensors"))
    safetensors.torch.save_file(vgg, str(tmp_path / "vgg.safetensors"))
    cfg = tiny_config()
    with pytest.raises(VQError, match="hold no VGG16 features; also set vgg_weights"):
        train_vq(
            cfg, quick(steps=1, lpips_weights=str(tmp_path / "lin.safetensors")), IMAGES, tmp_path / "a", progress=False
        )
    train = quick(
        steps=1,
        disc_start=None,
        lpips_weights=str(tmp_path / "lin.safetensors"),
        vgg_weights=str(tmp_path / "vgg.safetensors"),
    )
    train_vq(cfg, train, IMAGES, tmp_path / "b", progress=False)
    assert metrics(tmp_path / "b")[0]["perceptual"] > 0
    train_vq(cfg, quick(steps=1, disc_start=None), IMAGES, tmp_path / "c", progress=False)
    assert "perceptual" not in metrics(tmp_path / "c")[0]  # no weights given: LPIPS is skipped


def test_lpips_is_zero_for_identical_images_and_positive_otherwise():
    lpips = lpips_with_random_weights()
    x = smooth_images(2, 16, channels=3)
    assert torch.allclose(lpips(x, x), torch.zeros(2, 1, 1, 1))
    assert (lpips(x, x.flip(-1)) > 0).all()


def test_images_are_checked():
    cfg = tiny_config()
    with pytest.raises(VQError, match=r"must lie in \[-1, 1\], found \[0\.0819, 250\]"):
        train_vq(cfg, quick(), (IMAGES + 1) * 127.5, "/nonexistent", progress=False)
    with pytest.raises(VQError, match=r"must be a tensor \(N, 1, 16, 16\)"):
        train_vq(cfg, quick(), IMAGES[:, :, :8], "/nonexistent", progress=False)
    with pytest.raises(VQError, match="floats"):
        train_vq(cfg, quick(), IMAGES.long(), "/nonexistent", progress=False)


def test_batch_order_is_a_permutation_per_epoch_and_reproducible():
    order = BatchOrder(10, 4, seed=3)
    first_epoch = torch.cat([order.indices(s) for s in range(5)])  # 20 positions = 2 epochs
    assert sorted(first_epoch[:10].tolist()) == list(range(10))
    assert sorted(first_epoch[10:].tolist()) == list(range(10))
    assert not torch.equal(first_epoch[:10], first_epoch[10:])
    assert torch.equal(BatchOrder(10, 4, seed=3).indices(3), order.indices(3))
    assert not torch.equal(BatchOrder(10, 4, seed=4).indices(0), order.indices(0))


def test_learning_rate_schedule():
    cfg = VQTrainConfig(steps=100, lr=1.0, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(cfg, 0) == pytest.approx(0.1 * (0.1 + 0.9))
    assert learning_rate(cfg, 50) == pytest.approx(0.1 + 0.9 * 0.5)
    assert learning_rate(cfg, 100) == pytest.approx(0.1)
    assert learning_rate(VQTrainConfig(lr=2.0), 12345) == 2.0


def test_train_presets():
    assert train_preset("digits").steps <= 1000
    assert train_preset("vq-16").lr == 1e-4
    with pytest.raises(ValueError, match="extra"):
        train_preset("digits", epochs=3)
