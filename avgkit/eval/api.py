"""The evaluation entry points: metrics for a set of samples against a reference.

``compute_metrics`` returns numbers; ``evaluate`` also returns what produced them;
``run_eval`` (behind ``avgkit eval``) writes the JSON report, the Markdown summary and a
sample grid into an output folder.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avgkit.eval.features import ImageFeatureExtractor, inception_extractor
from avgkit.eval.files import AvgkitError
from avgkit.eval.images import ImageSet, open_images, save_image_grid
from avgkit.eval.metrics import (
    feature_statistics,
    frechet_distance,
    frechet_distance_features,
    inception_score,
    precision_recall,
)
from avgkit.eval.reference import ReferenceStats, reference_stats
from avgkit.eval.report import build_report, write_report
from avgkit.io import sha256_file

__all__ = ["METRICS", "EvalResult", "compute_metrics", "evaluate", "get_extractor", "run_eval"]

METRICS = ("fid", "is", "precision", "recall")
EXTRACTORS = ("inception-v3-compat", "digits")
_NEEDS_REFERENCE = {"fid", "precision", "recall"}

ImagesLike = str | Path | Tensor | np.ndarray | ImageSet
ReferenceLike = ImagesLike | ReferenceStats


@dataclass
class EvalResult:
    """Metrics plus the facts a report records about how they were computed."""

    metrics: dict[str, float]
    extractor: ImageFeatureExtractor
    samples: ImageSet
    reference: ReferenceStats | None
    settings: dict[str, Any] = field(default_factory=dict)


def get_extractor(
    extractor: str | ImageFeatureExtractor = "inception-v3-compat",
    *,
    device: str | torch.device | None = None,
    weights_path: str | Path | None = None,
) -> ImageFeatureExtractor:
    """An extractor by name (``"inception-v3-compat"`` or ``"digits"``), or as given."""
    if isinstance(extractor, ImageFeatureExtractor):
        return extractor
    if extractor in ("inception-v3-compat", "inception"):
        return inception_extractor(weights_path, device=device)
    if extractor == "digits":
        from avgkit.eval.digits import digits_extractor

        return digits_extractor(device=device)
    from avgkit.errors import did_you_mean

    raise AvgkitError(f"unknown feature extractor {extractor!r}{did_you_mean(str(extractor), EXTRACTORS)}")


def _open_reference(reference: ReferenceLike, samples: ImageSet) -> ReferenceLike:
    """``"digits:train"`` / ``"digits:test"``: the real digits at the samples' size.

    The reference is upsampled like the training data of a digits model, so both sides
    carry the same interpolation blur.
    """
    if isinstance(reference, str) and reference.startswith("digits:"):
        from avgkit.eval.digits import real_digits

        images, _ = real_digits(reference.split(":", 1)[1], size=int(samples.take(1).shape[-1]))
        return images
    return reference


def evaluate(
    samples: ImagesLike,
    reference: ReferenceLike | None,
    *,
    metrics: Sequence[str] = METRICS,
    extractor: str | ImageFeatureExtractor = "inception-v3-compat",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    weights_path: str | Path | None = None,
    cache: bool = True,
    progress: bool = True,
    is_splits: int = 10,
    pr_k: int = 3,
    fid_method: str = "eigh",
) -> EvalResult:
    """Compute ``metrics`` of ``samples`` against ``reference`` with one extractor.

    ``samples``: a folder of images, an ``.npz`` (``arr_0``), or ``(N, C, H, W)``
    uint8 / float in ``[-1, 1]``. ``reference``: the same kinds, a statistics file, a
    :class:`ReferenceStats`, ``"digits:train"``/``"digits:test"``, or ``None`` when
    only ``"is"`` is asked for. Reference statistics are cached (see
    :func:`reference_stats`).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise AvgkitError(f"unknown metric {unknown[0]!r}: choose from {', '.join(METRICS)}")
    if reference is None and _NEEDS_REFERENCE & set(metrics):
        raise AvgkitError("fid, precision and recall need a reference: pass -r/--reference (images, an npz, a "
                          "statistics file or digits:train), or --metrics is")
    feature_extractor = get_extractor(extractor, device=device, weights_path=weights_path)
    sample_set = open_images(samples)
    ref = None
    if reference is not None and _NEEDS_REFERENCE & set(metrics):
        ref = reference_stats(
            _open_reference(reference, sample_set),
            feature_extractor,
            cache=cache,
            batch_size=batch_size,
            progress=progress,
        )
        if isinstance(reference, str) and reference.startswith("digits:"):
            ref.source_path = reference
        if {"precision", "recall"} & set(metrics) and ref.features is None:
            raise AvgkitError(
                f"reference statistics {ref.path} hold no features: precision/recall need the reference images"
            )
    feats = feature_extractor.extract(sample_set, batch_size=batch_size, progress=progress, description="samples")

    results: dict[str, float] = {}
    if "fid" in metrics:
        assert ref is not None
        results["fid"] = _fid(feats.pool, ref, fid_method)
    if "is" in metrics:
        if feats.logits is None:
            raise AvgkitError(f"{feature_extractor.extractor_id} gives no logits: drop 'is' from the metrics")
        results["is"], results["is_std"] = inception_score(feats.logits, splits=is_splits)
    if "precision" in metrics or "recall" in metrics:
        assert ref is not None and ref.features is not None
        precision, recall = precision_recall(ref.features, feats.pool, k=pr_k, device=feature_extractor.device)
        if "precision" in metrics:
            results["precision"] = precision
        if "recall" in metrics:
            results["recall"] = recall
    settings = {"is_splits": is_splits, "is_shuffle_seed": 2020, "pr_k": pr_k, "fid_method": fid_method}
    return EvalResult(results, feature_extractor, sample_set, ref, settings)


def _fid(features: np.ndarray, ref: ReferenceStats, method: str) -> float:
    """FID of sample features against a reference; small sets skip the D x D matrices."""
    if ref.features is not None and max(len(features), len(ref.features)) < features.shape[1] and method == "eigh":
        return frechet_distance_features(features, ref.features)
    mu, sigma = feature_statistics(features)
    return frechet_distance(mu, sigma, ref.mu, ref.sigma, method=method)


def compute_metrics(samples: ImagesLike, reference: ReferenceLike | None, **options: Any) -> dict[str, float]:
    """``{"fid", "is", "is_std", "precision", "recall"}`` (those asked for) as floats.

    Takes the arguments of :func:`evaluate` (``metrics``, ``extractor``, ``batch_size``, ...).
    """
    return evaluate(samples, reference, **options).metrics


def _npz_labels(path: Path) -> np.ndarray | None:
    """Class labels stored next to ADM-style samples (``arr_1``), if any."""
    if path.suffix != ".npz":
        return None
    with zipfile.ZipFile(path) as archive:
        if "arr_1.npy" not in archive.namelist():
            return None
    with np.load(path, allow_pickle=False) as data:
        return np.asarray(data["arr_1"])


def run_eval(
    samples_path: str | Path,
    reference_path: str | Path | None,
    out_dir: str | Path,
    *,
    metrics: Sequence[str] = METRICS,
    extractor: str = "inception-v3-compat",
    weights_path: str | Path | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    sampling: Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_sha256: str | None = None,
    seed: int | None = None,
    grid_size: int = 64,
    cache: bool = True,
    progress: bool = True,
    name: str = "eval",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate saved samples and write ``<name>.json``, ``<name>.md`` and ``<name>_grid.png``.

    ``samples_path``: a folder of PNGs or an ``.npz`` (``arr_0`` N x H x W x 3 uint8,
    optional ``arr_1`` labels). ``reference_path``: images, statistics, or
    ``"digits:test"``. ``sampling``, ``checkpoint`` (hashed unless
    ``checkpoint_sha256`` is given) and ``seed`` are recorded as given. For the digits
    extractor, labelled samples also get ``digit_accuracy`` from
    :class:`~avgkit.eval.digits.DigitClassifier`. Returns the report dictionary.
    """
    out_dir = Path(out_dir)
    samples_path = Path(samples_path)
    if out_dir.exists() and not out_dir.is_dir():
        raise AvgkitError(f"--out {out_dir} is a file; pass a folder for the report")
    if samples_path.is_dir() and out_dir.resolve().is_relative_to(samples_path.resolve()):
        raise AvgkitError(f"report folder {out_dir} is inside the samples folder: write it elsewhere")
    if (out_dir / f"{name}.json").exists() and not overwrite:
        raise AvgkitError(f"{out_dir / (name + '.json')} already holds a report; pass --out for another folder, or "
                          f"--overwrite to replace it")
    result = evaluate(
        samples_path,
        reference_path,
        metrics=metrics,
        extractor=extractor,
        batch_size=batch_size,
        device=device,
        weights_path=weights_path,
        cache=cache,
        progress=progress,
    )
    labels = _npz_labels(samples_path)
    if extractor == "digits" and labels is not None:
        from avgkit.eval.digits import DigitClassifier

        images = torch.cat(list(result.samples.batches(1024)))
        result.metrics["digit_accuracy"] = DigitClassifier().accuracy(images, labels)

    grid = None
    if grid_size > 0:
        grid = f"{name}_grid.png"
        save_image_grid(result.samples.take(grid_size), out_dir / grid)
    checkpoint_info = None
    if checkpoint is not None or checkpoint_sha256 is not None:
        digest = checkpoint_sha256 if checkpoint is None else checkpoint_sha256 or sha256_file(checkpoint)
        checkpoint_info = {"path": str(checkpoint) if checkpoint is not None else None, "sha256": digest}
    report = build_report(
        metrics=result.metrics,
        evaluator=result.extractor.evaluator,
        extractor=result.extractor.describe(),
        reference=result.reference.describe() if result.reference is not None else None,
        samples={"path": str(samples_path), "sha256": result.samples.sha256, "num_images": len(result.samples)},
        settings=result.settings,
        sampling=sampling,
        checkpoint=checkpoint_info,
        seed=seed,
        grid=grid,
    )
    json_path, md_path = write_report(report, out_dir, name)
    report["files"] = {"json": str(json_path), "markdown": str(md_path)}
    return report
