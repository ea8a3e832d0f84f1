"""``run_eval`` end to end on the digits domain: report contents and files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch_fidelity
from PIL import Image

import avgkit
from avgkit.data.sources import load_digits_images
from avgkit.errors import AvgkitError
from avgkit.eval import run_eval
from avgkit.eval.images import to_uint8_rgb
from avgkit.eval.report import REPORT_FORMAT, render_markdown
from avgkit.io import sha256_file


def test_run_eval_writes_a_reproducible_report(tmp_path):
    images, labels = load_digits_images(16, "test")
    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=to_uint8_rgb(images).permute(0, 2, 3, 1).numpy(), arr_1=labels.numpy())
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights")
    out = tmp_path / "eval"
    sampling = {"cfg_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}

    report = run_eval(
        samples,
        "digits:train",
        out,
        extractor="digits",
        device="cpu",
        sampling=sampling,
        checkpoint=checkpoint,
        seed=1234,
        grid_size=16,
        progress=False,
    )

    saved = json.loads((out / "eval.json").read_text())
    assert saved == {k: v for k, v in report.items() if k != "files"}
    assert saved["format"] == REPORT_FORMAT
    assert saved["evaluator"] == f"avgkit {avgkit.__version__} / torch-fidelity {torch_fidelity.__version__} digits-cnn"
    extractor = saved["feature_extractor"]
    assert extractor["id"] == "digits-cnn" and len(extractor["weights_sha256"]) == 64
    assert saved["reference"]["path"] == "digits:train" and saved["reference"]["num_images"] == 1438
    assert saved["samples"] == {"path": str(samples), "sha256": sha256_file(samples), "num_images": len(labels)}
    assert saved["num_samples"] == len(labels)
    assert saved["sampling"] == sampling and saved["seed"] == 1234
    assert saved["checkpoint"] == {"path": str(checkpoint), "sha256": sha256_file(checkpoint)}
    assert saved["metric_settings"]["is_splits"] == 10 and saved["metric_settings"]["pr_k"] == 3
    metrics = saved["metrics"]
    assert set(metrics) == {"fid", "is", "is_std", "precision", "recall", "digit_accuracy"}
    assert metrics["digit_accuracy"] >= 0.97  # real held-out digits, labelled correctly
    assert 0.0 <= metrics["fid"] < 20.0 and metrics["precision"] > 0.5

    assert Image.open(out / saved["grid"]).size == (4 * 18 + 2, 4 * 18 + 2)
    summary = (out / "eval.md").read_text()
    assert "![samples](eval_grid.png)" in summary and f"{metrics['fid']:.4f}" in summary
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "eval.md", "eval_grid.png"]  # no temporary files


def test_markdown_summary_lists_metrics_and_settings():
    report = {
        "metrics": {"fid": 3.5, "is": 250.0},
        "evaluator": "avgkit x / torch-fidelity y inception-v3-compat",
        "feature_extractor": {"id": "inception-v3-compat", "weights_sha256": "f" * 64},
        "samples": {"path": "s.npz"},
        "num_samples": 50000,
        "reference": {"path": "ref.npz", "num_images": 10000, "sha256": "e" * 64},
        "sampling": {"cfg_scale": 2.0},
        "seed": 0,
        "grid": None,
    }
    text = render_markdown(report)
    assert "| FID | 3.5000 |" in text and "| Inception Score | 250.0000 |" in text
    assert "cfg_scale=2.0" in text and "50000 from s.npz" in text
    assert "![samples]" not in text
    # a whole sampling.json (as `avgkit eval` finds it beside the samples): only its sampler settings
    report["sampling"] = {"sampler": {"name": "ar", "cfg_scale": 4.0}, "recipe": {"train": {"lr": 1}}, "plugins": {}}
    line = next(x for x in render_markdown(report).splitlines() if x.startswith("- sampling:"))
    assert line == "- sampling: name=ar, cfg_scale=4.0"


def test_unknown_extractor_is_a_one_line_error(tmp_path):
    with pytest.raises(AvgkitError, match="did you mean 'digits'"):
        run_eval(tmp_path, None, tmp_path.parent / "out", metrics=("is",), extractor="digit", progress=False)


def test_report_folder_inside_samples_folder_is_refused(tmp_path):
    with pytest.raises(AvgkitError, match="inside the samples folder"):
        run_eval(tmp_path, None, tmp_path / "eval", metrics=("is",), extractor="digits", progress=False)
