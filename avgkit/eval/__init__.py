"""Evaluation: FID, Inception Score, precision/recall, and reproducible reports.

Features come from torch-fidelity's ``inception-v3-compat`` network (weights read from
a verified local file, never downloaded) or, for the built-in digits, from a small CNN
trained on the real digits. The metrics are computed by avgkit in float64.

    from avgkit.eval import compute_metrics
    compute_metrics("samples/", "VIRTUAL_imagenet256_labeled.npz")
    # {'fid': ..., 'is': ..., 'is_std': ..., 'precision': ..., 'recall': ...}
"""

from avgkit.eval.api import METRICS, EvalResult, compute_metrics, evaluate, get_extractor, run_eval
from avgkit.eval.features import FeatureSet, ImageFeatureExtractor, inception_extractor
from avgkit.eval.metrics import feature_statistics, frechet_distance, inception_score, precision_recall
from avgkit.eval.reference import ReferenceStats, load_reference_stats, reference_stats, save_reference_stats

__all__ = [
    "METRICS",
    "EvalResult",
    "FeatureSet",
    "ImageFeatureExtractor",
    "ReferenceStats",
    "compute_metrics",
    "evaluate",
    "feature_statistics",
    "frechet_distance",
    "get_extractor",
    "inception_extractor",
    "inception_score",
    "load_reference_stats",
    "precision_recall",
    "reference_stats",
    "run_eval",
    "save_reference_stats",
]
