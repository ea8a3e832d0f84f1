"""Reference statistics: computing, caching by content hash, saving and loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from avgkit.errors import AvgkitError
from avgkit.eval import ImageFeatureExtractor, compute_metrics
from avgkit.eval.files import stats_cache_dir
from avgkit.eval.reference import (
    ReferenceStats,
    is_stats_file,
    load_reference_stats,
    reference_stats,
    save_reference_stats,
)


class TinyFeatures(FeatureExtractorBase):
    """Cheap stand-in for Inception: 4x4 average-pooled pixels; counts images seen."""

    def __init__(self, name="tiny", features_list=("pool",)):
        super().__init__(name, list(features_list))
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        return (torch.nn.functional.adaptive_avg_pool2d(x.float(), 4).flatten(1),)

    @staticmethod
    def get_provided_features_list():
        return ("pool",)


def tiny_extractor(extractor_id: str = "tiny") -> ImageFeatureExtractor:
    return ImageFeatureExtractor(
        TinyFeatures(), extractor_id=extractor_id, weights_sha256="ab" * 32, pool_feature="pool", device="cpu"
    )


@pytest.fixture
def reference_images() -> torch.Tensor:
    return torch.randint(0, 256, (40, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def write_folder(images: torch.Tensor, folder) -> None:
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")


def test_stats_are_cached_by_content_and_extractor(tmp_path, reference_images):
    folder = tmp_path / "ref"
    write_folder(reference_images, folder)
    extractor = tiny_extractor()
    first = reference_stats(folder, extractor, progress=False)
    assert extractor.module.seen == 40
    assert first.path is not None and first.path.startswith(str(stats_cache_dir()))

    again = reference_stats(folder, extractor, progress=False)
    assert extractor.module.seen == 40  # served from the cache
    np.testing.assert_array_equal(again.mu, first.mu)
    np.testing.assert_array_equal(again.features, first.features)
    assert again.source_sha256 == first.source_sha256

    other = tiny_extractor("tiny-v2")
    reference_stats(folder, other, progress=False)
    assert other.module.seen == 40  # a different extractor does not share the cache

    (folder / "0000.png").unlink()
    reference_stats(folder, extractor, progress=False)
    assert extractor.module.seen == 40 + 39  # changed content, new statistics


def test_adm_npz_reference_uses_images_not_its_stored_statistics(tmp_path, reference_images):
    npz = tmp_path / "VIRTUAL_ref.npz"
    # ADM batches also carry TensorFlow statistics; they must be ignored.
    np.savez(npz, arr_0=reference_images.permute(0, 2, 3, 1).numpy(), mu=np.zeros(3), sigma=np.eye(3))
    assert not is_stats_file(npz)
    stats = reference_stats(npz, tiny_extractor(), cache=False, progress=False)
    direct = reference_stats(reference_images, tiny_extractor(), progress=False)
    assert stats.num_images == 40 and stats.mu.shape == (48,)
    np.testing.assert_allclose(stats.mu, direct.mu)
    np.testing.assert_allclose(stats.sigma, direct.sigma)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_and_load_round_trip_without_pickle(tmp_path, suffix):
    features = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    stats = ReferenceStats.from_features(
        features, extractor_id="tiny", weights_sha256="ab" * 32, source_sha256="cd" * 32, source_path="/data/ref"
    )
    path = save_reference_stats(stats, tmp_path / f"stats{suffix}")
    assert is_stats_file(path)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    loaded = load_reference_stats(path)
    np.testing.assert_allclose(loaded.mu, stats.mu)
    np.testing.assert_allclose(loaded.sigma, stats.sigma)
    np.testing.assert_array_equal(loaded.features, features)
    assert (loaded.num_images, loaded.extractor_id, loaded.source_sha256, loaded.source_path) == (
        30,
        "tiny",
        "cd" * 32,
        "/data/ref",
    )
    # A stats file passed as the reference is used as is, with its extractor checked.
    assert reference_stats(path, tiny_extractor(), progress=False).path == str(path)
    with pytest.raises(AvgkitError, match="recompute them"):
        reference_stats(path, tiny_extractor("another"), progress=False)


def test_precision_recall_need_reference_features(tmp_path, reference_images):
    features = np.random.default_rng(1).normal(size=(30, 48))
    stats = ReferenceStats.from_features(features, extractor_id="tiny", weights_sha256="ab" * 32)
    stats.features = None
    path = save_reference_stats(stats, tmp_path / "mu_sigma_only.npz")
    fid_only = compute_metrics(reference_images, path, metrics=("fid",), extractor=tiny_extractor(), progress=False)
    assert fid_only["fid"] > 0
    with pytest.raises(AvgkitError, match="hold no features"):
        compute_metrics(reference_images, path, metrics=("precision",), extractor=tiny_extractor(), progress=False)
