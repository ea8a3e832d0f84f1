"""Reference statistics: computed once per (reference file, extractor), then cached.

A reference is a folder of images, an ADM-style ``.npz`` batch (``arr_0``: uint8
N x H x W x 3), or a statistics file written by :func:`save_reference_stats`
(``.npz`` or ``.safetensors``; both are read without pickle). Statistics hold the
mean and covariance for FID and, for precision/recall, the features themselves.

ADM's reference batches also carry ``mu``/``sigma`` from the TensorFlow Inception; those
are ignored on purpose: the statistics are recomputed from ``arr_0`` with the extractor
used for the samples, so that both sides of the distance come from one network.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_safetensors
from safetensors.numpy import save_file as save_safetensors

from avgkit.eval.features import FeatureSet, ImageFeatureExtractor
from avgkit.eval.files import AvgkitError, stats_cache_dir
from avgkit.eval.images import ImageSet, open_images
from avgkit.eval.metrics import feature_statistics
from avgkit.io import atomic_write

__all__ = [
    "ReferenceStats",
    "is_stats_file",
    "load_reference_stats",
    "reference_stats",
    "save_reference_stats",
]

_META_KEYS = ("extractor_id", "weights_sha256", "source_sha256", "source_path")


@dataclass
class ReferenceStats:
    """FID statistics of a reference set, plus its features for precision/recall.

    ``extractor_id``/``weights_sha256`` say which network made them (``None`` for
    foreign files that do not say); ``source_sha256``/``source_path`` name the images.
    ``path`` is where these statistics were read from or cached.
    """

    mu: np.ndarray
    sigma: np.ndarray
    num_images: int
    features: np.ndarray | None = None
    extractor_id: str | None = None
    weights_sha256: str | None = None
    source_sha256: str | None = None
    source_path: str | None = None
    path: str | None = None

    @classmethod
    def from_features(cls, features: np.ndarray, **meta: Any) -> ReferenceStats:
        mu, sigma = feature_statistics(features)
        return cls(mu=mu, sigma=sigma, num_images=int(features.shape[0]), features=features, **meta)

    def check_extractor(self, extractor: ImageFeatureExtractor) -> None:
        """Refuse statistics that another network computed."""
        if self.extractor_id is None:
            return
        if (self.extractor_id, self.weights_sha256) != (extractor.extractor_id, extractor.weights_sha256):
            raise AvgkitError(
                f"reference statistics {self.path or ''} were computed with {self.extractor_id} "
                f"(weights {str(self.weights_sha256)[:12]}), not {extractor.extractor_id} "
                f"(weights {extractor.weights_sha256[:12]}): recompute them from the reference images"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.source_path,
            "sha256": self.source_sha256,
            "num_images": self.num_images,
            "stats_path": self.path,
        }


def save_reference_stats(stats: ReferenceStats, path: str | Path) -> Path:
    """Write statistics as ``.npz`` or ``.safetensors`` (chosen by suffix), atomically."""
    path = Path(path)
    arrays = {"mu": stats.mu, "sigma": stats.sigma, "num_images": np.array([stats.num_images], dtype=np.int64)}
    if stats.features is not None:
        arrays["features"] = np.ascontiguousarray(stats.features, dtype=np.float32)
    meta = {key: getattr(stats, key) for key in _META_KEYS if getattr(stats, key) is not None}
    if path.suffix == ".safetensors":
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        return atomic_write(path, lambda tmp: save_safetensors(arrays, str(tmp), metadata=meta))
    if path.suffix == ".npz":
        meta_arrays = {f"meta_{key}": np.array(value) for key, value in meta.items()}
        # mypy matches the ** arrays against savez's bool allow_pickle keyword
        return atomic_write(path, lambda tmp: np.savez(tmp, **arrays, **meta_arrays))  # type: ignore[arg-type]
    raise AvgkitError(f"unknown statistics format {path.suffix!r}: use .npz or .safetensors")


def is_stats_file(path: str | Path) -> bool:
    """Whether ``path`` holds statistics (``mu`` and ``sigma``) rather than images."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return True
    if path.suffix != ".npz" or not path.is_file():
        return False
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    # ADM batches hold images and TensorFlow statistics: they count as images.
    return {"mu.npy", "sigma.npy"} <= names and "arr_0.npy" not in names


def load_reference_stats(path: str | Path) -> ReferenceStats:
    """Read statistics written by :func:`save_reference_stats` (or any npz with mu/sigma)."""
    path = Path(path)
    if not path.is_file():
        raise AvgkitError(f"reference statistics not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            meta = dict(handle.metadata() or {})
        arrays = load_safetensors(str(path))
    else:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        meta = {key[5:]: str(value) for key, value in arrays.items() if key.startswith("meta_")}
    if "mu" not in arrays or "sigma" not in arrays:
        raise AvgkitError(f"{path} holds no mu/sigma: pass reference images or a statistics file")
    features = arrays.get("features")
    num = (
        int(arrays["num_images"].reshape(-1)[0])
        if "num_images" in arrays
        else (len(features) if features is not None else 0)
    )
    return ReferenceStats(
        mu=arrays["mu"].astype(np.float64),
        sigma=arrays["sigma"].astype(np.float64),
        num_images=num,
        features=features,
        path=str(path),
        **{key: meta.get(key) for key in _META_KEYS},
    )


def reference_stats(
    reference: str | Path | torch.Tensor | np.ndarray | ImageSet | ReferenceStats,
    extractor: ImageFeatureExtractor,
    *,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> ReferenceStats:
    """Statistics of ``reference`` under ``extractor``, from the cache when possible.

    Computed statistics are cached in ``cache_dir`` (default ``$AVGKIT_HOME/stats``)
    as safetensors named by the reference's SHA-256 and the extractor's cache key, so
    a renamed copy of the same file hits the cache and an edited file misses it.
    """
    if isinstance(reference, ReferenceStats):
        reference.check_extractor(extractor)
        return reference
    if isinstance(reference, (str, Path)) and is_stats_file(reference):
        stats = load_reference_stats(reference)
        stats.check_extractor(extractor)
        return stats
    images = open_images(reference)
    source_path = str(images.path) if images.path is not None else None
    cache_file = None
    if cache and images.kind != "tensor":
        folder = Path(cache_dir) if cache_dir is not None else stats_cache_dir()
        cache_file = folder / f"{images.sha256[:32]}-{extractor.cache_key}.safetensors"
        if cache_file.is_file():
            stats = load_reference_stats(cache_file)
            stats.source_path = source_path
            stats.check_extractor(extractor)
            return stats
    feats: FeatureSet = extractor.extract(images, batch_size=batch_size, progress=progress, description="reference")
    stats = ReferenceStats.from_features(
        feats.pool,
        extractor_id=extractor.extractor_id,
        weights_sha256=extractor.weights_sha256,
        source_sha256=images.sha256,
        source_path=source_path,
    )
    if cache_file is not None:
        save_reference_stats(stats, cache_file)
        stats.path = str(cache_file)
    return stats
