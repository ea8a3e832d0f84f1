"""Weights handling (never a download, always verified) and image inputs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

import avgkit.eval.features as features
from avgkit.errors import AvgkitError
from avgkit.eval.features import (
    INCEPTION_REGISTRY_NAME,
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_SHA256,
    InceptionV3Compat,
    find_inception_weights,
)
from avgkit.eval.files import weights_dir
from avgkit.eval.images import open_images, to_uint8_rgb
from avgkit.io import sha256_file


class Payload:
    """Stands for any object whose unpickling would run code."""


@pytest.fixture
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", refuse)
    monkeypatch.setattr("torch.hub.load_state_dict_from_url", refuse)


def test_weights_constants_agree_with_torch_fidelity():
    assert URL_INCEPTION_V3.endswith("/" + INCEPTION_WEIGHTS_FILE)
    # torch.hub naming: the file name carries the first digits of the file's SHA-256.
    assert INCEPTION_WEIGHTS_FILE.rsplit("-", 1)[1] == INCEPTION_WEIGHTS_SHA256[:8] + ".pth"


def test_missing_weights_error_names_file_hash_and_folder(no_download):
    with pytest.raises(AvgkitError) as info:
        InceptionV3Compat(INCEPTION_REGISTRY_NAME, ["2048"])
    message = str(info.value)
    assert "\n" not in message
    for part in (INCEPTION_WEIGHTS_FILE, INCEPTION_WEIGHTS_SHA256, str(weights_dir())):
        assert part in message


def test_torch_fidelity_with_avgkit_extractor_does_not_download(no_download):
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(AvgkitError, match=INCEPTION_WEIGHTS_FILE):
        torch_fidelity.calculate_metrics(
            input1=torch.utils.data.TensorDataset(images),
            isc=True,
            feature_extractor=INCEPTION_REGISTRY_NAME,
            cuda=False,
            verbose=False,
            cache=False,
        )


def test_wrong_hash_is_refused(tmp_path):
    bogus = tmp_path / INCEPTION_WEIGHTS_FILE
    bogus.write_bytes(b"not the weights")
    with pytest.raises(AvgkitError, match="expected " + INCEPTION_WEIGHTS_SHA256):
        find_inception_weights(bogus)


def test_verified_weights_load_without_unpickling_code(tmp_path, monkeypatch, no_download):
    source = InceptionV3Compat(INCEPTION_REGISTRY_NAME, ["2048"], avgkit_random_init_seed=7)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    monkeypatch.setattr(features, "INCEPTION_WEIGHTS_SHA256", sha256_file(path))

    loaded = InceptionV3Compat(INCEPTION_REGISTRY_NAME, ["2048"], feature_extractor_weights_path=path)
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    # A file that needs arbitrary unpickling is refused even when its hash is trusted.
    evil = tmp_path / "evil.pth"
    torch.save({"payload": Payload()}, evil)
    monkeypatch.setattr(features, "INCEPTION_WEIGHTS_SHA256", sha256_file(evil))
    with pytest.raises(pickle.UnpicklingError):
        features.load_inception_state_dict(evil)


def test_random_init_is_deterministic_and_keeps_feature_scale(no_download):
    a = features.inception_extractor(random_init_seed=3, device="cpu")
    b = features.inception_extractor(random_init_seed=3, device="cpu")
    assert a.weights_sha256 == b.weights_sha256
    assert a.extractor_id == "inception-v3-compat-random3"
    a.module.INPUT_IMAGE_SIZE = 75  # instance override: small input keeps this test fast
    pool = a.extract(torch.rand(2, 3, 16, 16) * 2 - 1, progress=False).pool
    assert pool.shape == (2, 2048)
    assert 1e-3 < float(np.abs(pool).mean()) < 1e3


def test_to_uint8_rgb_quantises_like_png_and_repeats_grey():
    grey = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2)
    out = to_uint8_rgb(grey)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 2, 2)
    assert out[0, :, 0, 0].tolist() == [0, 0, 0]
    assert out[0, 0].flatten().tolist() == [0, 128, 255, 255]
    assert torch.equal(to_uint8_rgb(out), out)
    with pytest.raises(AvgkitError, match="channels"):
        to_uint8_rgb(torch.zeros(2, 8, 8, 3))


def test_folder_npz_and_tensor_give_the_same_batches(tmp_path):
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    npz = tmp_path / "samples.npz"
    np.savez(npz, arr_0=images.permute(0, 2, 3, 1).numpy(), arr_1=np.arange(5))
    for source in (folder, npz, images):
        batches = list(open_images(source).batches(2))
        assert [len(b) for b in batches] == [2, 2, 1]
        assert torch.equal(torch.cat(batches), images)
    assert open_images(npz).sha256 == sha256_file(npz)
    assert open_images(folder).sha256 != open_images(images).sha256


def test_images_of_different_sizes_are_refused(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (9, 9)).save(tmp_path / "b.png")
    with pytest.raises(AvgkitError, match="differ in size"):
        next(open_images(tmp_path).batches(4))
