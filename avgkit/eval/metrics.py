"""The metrics themselves, on features: FID, Inception Score, precision and recall.

Computed by avgkit in float64 so the numbers do not depend on the feature extractor's
library version; conventions follow torch-fidelity (and through it the original
TensorFlow code), which the tests check against ``torch_fidelity.calculate_metrics``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from avgkit.eval.files import AvgkitError

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_features",
    "inception_score",
    "precision_recall",
]


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased, as numpy/TTUR/ADM) in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise AvgkitError(f"need at least 2 feature vectors (N, D) for statistics, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    *,
    method: str = "eigh",
    eps: float = 1e-6,
) -> float:
    """``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` in float64.

    ``method="eigh"`` (default) uses ``tr((S1 S2)^(1/2)) = tr((A S2 A)^(1/2))`` with
    ``A = S1^(1/2)``: both square roots are of symmetric PSD matrices, so eigenvalue
    decompositions give them without the complex round-off of a general ``sqrtm``,
    even when few samples make the covariances singular. ``method="sqrtm"`` is the
    ADM/TTUR computation (scipy ``sqrtm`` of the product, retried with ``eps`` added
    to the diagonals when it is not finite), kept for comparing with published code.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise AvgkitError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}; "
            "compute both with the same feature extractor"
        )
    diff = mu1 - mu2
    if method == "eigh":
        tr_covmean = _trace_sqrt_product(sigma1, sigma2)
    elif method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    else:
        raise AvgkitError(f"unknown Frechet distance method {method!r}: use 'eigh' or 'sqrtm'")
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets.

    Equal to ``frechet_distance(*feature_statistics(f1), *feature_statistics(f2))``.
    With fewer samples than dimensions in both sets (small evaluations), it works on
    the ``n1 x n2`` cross product of the centred features instead of ``D x D``
    matrices: the nonzero eigenvalues of ``S1 S2`` are the squared singular values of
    ``A1 A2^T / sqrt((n1 - 1)(n2 - 1))``, so the trace term is that matrix's nuclear norm.
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    (n1, dim), n2 = f1.shape, f2.shape[0]
    if max(n1, n2) >= dim or min(n1, n2) < 2:
        return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    if f2.shape[1] != dim:
        raise AvgkitError(f"feature sets differ in width: {f1.shape} vs {f2.shape}")
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    a1, a2 = f1 - mu1, f2 - mu2
    diff = mu1 - mu2
    trace1, trace2 = (a1 * a1).sum() / (n1 - 1), (a2 * a2).sum() / (n2 - 1)
    cross = (a1 @ a2.T) / np.sqrt((n1 - 1) * (n2 - 1))
    tr_covmean = np.linalg.svd(cross, compute_uv=False).sum()
    return float(diff @ diff + trace1 + trace2 - 2.0 * tr_covmean)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    root = _psd_sqrt(sigma1)
    inner = root @ sigma2 @ root
    values = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise AvgkitError(
                f"matrix square root has imaginary part {np.abs(covmean.imag).max():.3g}: "
                "use method='eigh' or more samples"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def inception_score(logits: np.ndarray, *, splits: int = 10, shuffle_seed: int | None = 2020) -> tuple[float, float]:
    """Mean and standard deviation of ``exp(E_x KL(p(y|x) || p(y)))`` over ``splits``.

    ``logits`` are pre-softmax class scores ``(N, K)``. Samples are shuffled with
    ``numpy.random.RandomState(shuffle_seed)`` before splitting (torch-fidelity's
    default, seed 2020); ``shuffle_seed=None`` keeps the given order (ADM's evaluator).
    Split ``i`` is rows ``[i N // splits, (i + 1) N // splits)``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    n = logits.shape[0]
    if logits.ndim != 2 or n < splits:
        raise AvgkitError(f"Inception Score needs at least {splits} samples (N, K), got shape {logits.shape}")
    if shuffle_seed is not None:
        logits = logits[np.random.RandomState(shuffle_seed).permutation(n)]
    log_p = torch.from_numpy(logits).log_softmax(dim=1).numpy()
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        part_p, part_log_p = p[i * n // splits : (i + 1) * n // splits], log_p[i * n // splits : (i + 1) * n // splits]
        log_marginal = np.log(part_p.mean(axis=0, keepdims=True))
        kl = (part_p * (part_log_p - log_marginal)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def precision_recall(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    k: int = 3,
    max_block_bytes: int = 1 << 28,
    device: str | torch.device | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with ``k``-NN balls.

    Each real (fake) feature gets a ball reaching its ``k``-th nearest other real
    (fake) feature. Precision: the fraction of fake features inside some real ball;
    recall: the fraction of real features inside some fake ball. Distances are
    Euclidean in float64, computed block by block so 50,000 x 50,000 pairs never sit
    in memory at once (``max_block_bytes`` per block), on ``device`` (default CPU; a
    GPU makes 50,000-sample sets take seconds instead of many minutes).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    real_t = torch.as_tensor(np.asarray(real, dtype=np.float64), device=device)
    fake_t = torch.as_tensor(np.asarray(fake, dtype=np.float64), device=device)
    if real_t.dim() != 2 or fake_t.dim() != 2 or real_t.shape[1] != fake_t.shape[1]:
        raise AvgkitError(f"feature sets differ: real {tuple(real_t.shape)} vs fake {tuple(fake_t.shape)}")
    if min(real_t.shape[0], fake_t.shape[0]) <= k:
        raise AvgkitError(f"precision/recall with k={k} needs more than {k} samples in each set")
    real_radii = _knn_radii(real_t, k, max_block_bytes)
    fake_radii = _knn_radii(fake_t, k, max_block_bytes)
    precision = _inside_any_ball(fake_t, real_t, real_radii, max_block_bytes).mean()
    recall = _inside_any_ball(real_t, fake_t, fake_radii, max_block_bytes).mean()
    return float(precision), float(recall)


def _rows_per_block(columns: int, max_block_bytes: int) -> int:
    return max(1, max_block_bytes // (8 * columns))


def _knn_radii(points: torch.Tensor, k: int, max_block_bytes: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour (itself excluded)."""
    step = _rows_per_block(points.shape[0], max_block_bytes)
    radii = [torch.cdist(block, points).kthvalue(k + 1, dim=1).values for block in points.split(step)]
    return torch.cat(radii)


def _inside_any_ball(
    queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, max_block_bytes: int
) -> np.ndarray:
    step = _rows_per_block(centres.shape[0], max_block_bytes)
    inside = [(torch.cdist(block, centres) <= radii[None]).any(dim=1) for block in queries.split(step)]
    return torch.cat(inside).double().cpu().numpy()
