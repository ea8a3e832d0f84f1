"""Evaluation reports: one JSON file with everything needed to reproduce a score.

A score without its evaluator, reference statistics, sample count, sampling settings
and seed cannot be compared with anything, so every result is written together with
them (``eval.json``), plus a short Markdown summary (``eval.md``) that shows a grid of
samples. Both are written atomically.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from avgkit.io import atomic_write_json, atomic_write_text

__all__ = ["REPORT_FORMAT", "build_report", "render_markdown", "write_report"]

REPORT_FORMAT = "avgkit-eval/1"

_METRIC_LABELS = {
    "fid": "FID",
    "is": "Inception Score",
    "is_std": "Inception Score std",
    "precision": "Precision",
    "recall": "Recall",
    "digit_accuracy": "Digit class accuracy",
}


def build_report(
    *,
    metrics: Mapping[str, float],
    evaluator: str,
    extractor: Mapping[str, Any],
    reference: Mapping[str, Any] | None,
    samples: Mapping[str, Any],
    settings: Mapping[str, Any],
    sampling: Mapping[str, Any] | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    seed: int | None = None,
    grid: str | None = None,
) -> dict[str, Any]:
    """Assemble the report dictionary (JSON-ready).

    ``extractor``: id and weights SHA-256; ``reference``: path, SHA-256, image count;
    ``samples``: path, SHA-256, count; ``settings``: metric settings (IS splits, PR k,
    FID method); ``sampling``: the sampler settings used to make the samples;
    ``checkpoint``: path and SHA-256 of the model; ``grid``: path of the sample grid
    PNG relative to the report.
    """
    return {
        "format": REPORT_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "evaluator": evaluator,
        "feature_extractor": dict(extractor),
        "reference": dict(reference) if reference is not None else None,
        "samples": dict(samples),
        "num_samples": samples.get("num_images"),
        "sampling": dict(sampling) if sampling is not None else None,
        "checkpoint": dict(checkpoint) if checkpoint is not None else None,
        "seed": seed,
        "metric_settings": dict(settings),
        "metrics": {key: float(value) for key, value in metrics.items()},
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(terse=True),
        },
        "grid": grid,
    }


def render_markdown(report: Mapping[str, Any]) -> str:
    """A short human summary of a report."""
    lines = ["# Evaluation", "", "| metric | value |", "|---|---|"]
    for key, value in report["metrics"].items():
        lines.append(f"| {_METRIC_LABELS.get(key, key)} | {value:.4f} |")
    reference = report.get("reference") or {}
    extractor = report["feature_extractor"]
    lines += [
        "",
        f"- evaluator: {report['evaluator']}",
        f"- feature extractor: {extractor.get('id')} (weights SHA-256 {str(extractor.get('weights_sha256'))[:16]}...)",
        f"- samples: {report.get('num_samples')} from {report['samples'].get('path') or 'memory'}",
    ]
    if reference:
        lines.append(
            f"- reference: {reference.get('path') or 'memory'} ({reference.get('num_images')} images, "
            f"SHA-256 {str(reference.get('sha256'))[:16]}...)"
        )
    if report.get("checkpoint"):
        lines.append(f"- checkpoint: {report['checkpoint'].get('path')} (SHA-256 {report['checkpoint'].get('sha256')})")
    if report.get("sampling"):
        # a whole sampling.json is in the JSON report; the summary shows its sampler settings
        sampling = report["sampling"]
        shown = sampling["sampler"] if isinstance(sampling.get("sampler"), dict) else sampling
        settings = ", ".join(f"{k}={v}" for k, v in shown.items() if not isinstance(v, (dict, list)))
        lines.append(f"- sampling: {settings}")
    lines.append(f"- seed: {report.get('seed')}")
    if report.get("grid"):
        lines += ["", f"![samples]({report['grid']})"]
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], out_dir: str | Path, name: str = "eval") -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    json_path = atomic_write_json(out_dir / f"{name}.json", report)
    md_path = atomic_write_text(out_dir / f"{name}.md", render_markdown(report))
    return json_path, md_path
