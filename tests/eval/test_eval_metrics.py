"""The metric formulas on hand-made features, against closed forms and torch-fidelity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_prc import calculate_precision_recall_full

from avgkit.errors import AvgkitError
from avgkit.eval.metrics import (
    feature_statistics,
    frechet_distance,
    frechet_distance_features,
    inception_score,
    precision_recall,
)


def random_covariance(rng: np.random.Generator, dim: int, rank: int) -> np.ndarray:
    factor = rng.normal(size=(dim, rank))
    return factor @ factor.T / rank


def test_frechet_distance_of_diagonal_gaussians_has_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    for method in ("eigh", "sqrtm"):
        got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2), method=method)
        assert got == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("rank", [64, 20])  # full rank, and singular as with few samples
def test_frechet_methods_agree_with_each_other_and_torch_fidelity(rank):
    rng = np.random.default_rng(0)
    s1, s2 = random_covariance(rng, 64, rank), random_covariance(rng, 64, rank)
    mu1, mu2 = rng.normal(size=64), rng.normal(size=64)
    eigh = frechet_distance(mu1, s1, mu2, s2)
    sqrtm = frechet_distance(mu1, s1, mu2, s2, method="sqrtm")
    theirs = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    assert eigh > 1.0
    assert eigh == pytest.approx(sqrtm, abs=1e-6)
    assert eigh == pytest.approx(theirs["frechet_inception_distance"], abs=1e-6)


@pytest.mark.parametrize("n1, n2", [(30, 45), (200, 150)])  # fewer / more samples than dimensions
def test_frechet_distance_from_features_equals_statistics_path(n1, n2):
    rng = np.random.default_rng(6)
    f1 = rng.normal(size=(n1, 64)) @ rng.normal(size=(64, 64))
    f2 = rng.normal(loc=0.5, size=(n2, 64))
    expected = frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    assert expected > 1.0
    assert frechet_distance_features(f1, f2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_identical_statistics_is_zero():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(50, 16))
    mu, sigma = feature_statistics(features)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_feature_statistics_match_torch_fidelity():
    features = np.random.default_rng(2).normal(size=(40, 8)).astype(np.float32)
    mu, sigma = feature_statistics(features)
    theirs = fid_features_to_statistics(torch.from_numpy(features))
    np.testing.assert_allclose(mu, theirs["mu"], atol=1e-6)
    np.testing.assert_allclose(sigma, theirs["sigma"], atol=1e-6)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(AvgkitError, match="same feature extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_inception_score_bounds():
    classes = 10
    uniform = np.zeros((100, classes))
    assert inception_score(uniform)[0] == pytest.approx(1.0)
    confident_balanced = np.eye(classes)[np.arange(100) % classes] * 50.0
    assert inception_score(confident_balanced, shuffle_seed=None)[0] == pytest.approx(classes, rel=1e-6)


def test_inception_score_matches_torch_fidelity():
    logits = np.random.default_rng(3).normal(scale=3.0, size=(103, 20)).astype(np.float32)
    mean, std = inception_score(logits)
    theirs = isc_features_to_metric(torch.from_numpy(logits))
    assert mean > 1.5
    assert mean == pytest.approx(theirs["inception_score_mean"], abs=1e-9)
    assert std == pytest.approx(theirs["inception_score_std"], abs=1e-9)


def test_precision_recall_matches_torch_fidelity():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(120, 6))
    fake = rng.normal(loc=0.7, scale=0.6, size=(90, 6))
    precision, recall = precision_recall(real, fake, k=3, max_block_bytes=4096)  # small blocks: chunking used
    theirs_precision, theirs_recall = calculate_precision_recall_full(torch.from_numpy(fake), torch.from_numpy(real))
    assert 0.0 < recall < 1.0
    assert precision == pytest.approx(theirs_precision, abs=1e-6)  # torch-fidelity averages in float32
    assert recall == pytest.approx(theirs_recall, abs=1e-6)  # torch-fidelity averages in float32


def test_precision_recall_extremes():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(50, 4))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
