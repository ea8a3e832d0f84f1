"""Acceptance: the ``digits`` preset trained on scikit-learn's digits reconstructs held-out digits
well enough that an independent classifier still reads them (>= 98%)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from avgkit_llamagen.loading import load_tokenizer
from avgkit_llamagen.presets import preset
from avgkit_llamagen.report import reconstruct
from avgkit_llamagen.train import train_preset, train_vq

from avgkit.data.sources import load_digits_images
from avgkit.eval.digits import DigitClassifier


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """Train the digits preset once per test session (one thread: the suite runs two workers on two cores)."""
    out = tmp_path_factory.mktemp("digits-vq")
    train_images, _ = load_digits_images(32, "train")
    test_images, test_labels = load_digits_images(32, "test")
    start = time.perf_counter()
    weights = train_vq(
        preset("digits"),
        train_preset("digits", threads=1, device="cpu"),
        train_images,
        out,
        eval_images=test_images,
        progress=False,
    )
    seconds = time.perf_counter() - start
    return weights, test_images, test_labels, seconds


def test_digits_reconstructions_stay_readable(digits_run):
    weights, test_images, test_labels, seconds = digits_run
    tokenizer = load_tokenizer(weights)
    codes, recons = reconstruct(tokenizer, test_images)
    assert codes.shape == (len(test_images), 16)
    accuracy = DigitClassifier().accuracy(recons, test_labels)
    report = json.loads((weights.parent / "report.json").read_text())
    print(
        f"digits VQ: held-out accuracy {accuracy:.2%}, PSNR {report['psnr']:.2f} dB, codebook usage "
        f"{report['codebook_usage']:.1%} ({report['codes_used']} codes), trained in {seconds:.1f} s"
    )
    assert accuracy >= 0.98
    assert report["psnr"] > 20.0
    assert report["codes_used"] >= 32


def test_digits_codes_round_trip_through_decode(digits_run):
    weights, test_images, _, _ = digits_run
    tokenizer = load_tokenizer(weights)
    codes = tokenizer.encode(test_images[:64])
    assert torch.equal(tokenizer.encode(test_images[:64]), codes)
    # a reconstruction re-encodes to mostly the same codes (chance agreement would be ~1/512)
    # and those decode to nearly the same image
    images = tokenizer.decode(codes)
    again = tokenizer.encode(images)
    assert (again == codes).float().mean() > 0.5
    mse = ((tokenizer.decode(again) - images) / 2).pow(2).mean()
    assert 10 * torch.log10(1 / mse) > 25.0
