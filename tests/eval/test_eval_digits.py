"""The digits domain's judges: SVC accuracy and the domain FID of the digits CNN."""

from __future__ import annotations

import pytest
import torch
import torch_fidelity
from eval_helpers import Uint8Images

import avgkit.eval.digits as digits
from avgkit.data.sources import load_digits_images
from avgkit.errors import AvgkitError
from avgkit.eval import compute_metrics


@pytest.fixture(scope="module")
def extractor():
    return digits.digits_extractor(device="cpu")


@pytest.fixture(scope="module")
def held_out():
    return digits.real_digits("test")


def shuffled_pixels(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Each image's 64 pixels in a random order: same intensities, no strokes."""
    g = torch.Generator().manual_seed(seed)
    flat = images.reshape(len(images), -1)
    order = torch.stack([torch.randperm(flat.shape[1], generator=g) for _ in range(len(images))])
    return flat.gather(1, order).reshape(images.shape)


def test_classifier_is_accurate_on_held_out_digits(held_out):
    classifier = digits.DigitClassifier()
    images, labels = held_out
    assert classifier.accuracy(images, labels) >= 0.97
    upsampled, labels32 = load_digits_images(32, "test")  # the size models are trained at
    assert classifier.accuracy(upsampled, labels32) >= 0.97
    noise = torch.rand(len(labels), 1, 8, 8) * 2 - 1
    assert classifier.accuracy(noise, labels) < 0.5


def test_domain_fid_separates_real_digits_from_noise_and_shuffles(extractor, held_out):
    images, _ = held_out
    g = torch.Generator().manual_seed(0)
    fid = {}
    for name, samples in {
        "real": images,
        "noise": torch.rand(images.shape, generator=g) * 2 - 1,
        "shuffled": shuffled_pixels(images, 1),
    }.items():
        metrics = compute_metrics(samples, "digits:train", metrics=("fid",), extractor=extractor, progress=False)
        fid[name] = metrics["fid"]
    assert fid["real"] < 0.1 * fid["shuffled"]
    assert fid["real"] < 0.1 * fid["noise"]


def test_domain_fid_matches_torch_fidelity_with_the_registered_extractor(extractor, held_out):
    images, _ = held_out
    reference, _ = load_digits_images(16, "train")
    ours = compute_metrics(images, reference, metrics=("fid", "is"), extractor=extractor, progress=False)
    theirs = torch_fidelity.calculate_metrics(
        input1=Uint8Images(images),
        input2=Uint8Images(reference),
        fid=True,
        isc=True,
        feature_extractor=digits.DIGITS_REGISTRY_NAME,
        cuda=False,
        cache=False,
        verbose=False,
        save_cpu_ram=True,
    )
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], abs=1e-3)
    assert ours["is"] == pytest.approx(theirs["inception_score_mean"], abs=1e-6)
    assert ours["is"] > 5.0  # confident and balanced over 10 classes


def test_cnn_weights_are_cached_not_retrained(extractor, monkeypatch):
    def refuse():
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(digits, "train_digits_cnn", refuse)
    model, path = digits.load_digits_cnn()
    assert path == extractor.module.weights_path
    assert path.suffix == ".safetensors" and digits.recipe_hash()[:16] in path.name
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, extractor.module.cnn.state_dict()[name])


def test_digit_grid_needs_square_multiple_of_eight():
    assert digits.to_digit_grid(torch.zeros(2, 3, 24, 24)).shape == (2, 1, 8, 8)
    with pytest.raises(AvgkitError, match="multiple of 8"):
        digits.to_digit_grid(torch.zeros(2, 1, 12, 12))
