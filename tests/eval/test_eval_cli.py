"""`avgkit eval` as a user runs it: an ADM-format npz of samples against a reference."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from avgkit.data.sources import load_digits_images


def test_eval_cli_on_an_npz_with_the_digits_extractor(tmp_path):
    images, labels = load_digits_images(size=32, split="test")
    u8 = ((images[:120, 0].numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=np.repeat(u8[..., None], 3, axis=-1), arr_1=labels[:120].numpy())
    out = tmp_path / "report"
    run = subprocess.run(
        [sys.executable, "-m", "avgkit", "eval", str(tmp_path / "samples.npz"), "-r", "digits:train",
         "--extractor", "digits", "--metrics", "fid", "--out", str(out), "--seed", "3"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "fid" in run.stdout
    report = json.loads((out / "eval.json").read_text())
    assert report["metrics"]["fid"] < 30  # real held-out digits are close to the real training digits
    assert report["metrics"]["digit_accuracy"] > 0.95
    assert report["seed"] == 3 and report["num_samples"] == 120 and report["sampling"] is None
    # settings written by `avgkit sample` beside the npz are recorded with the scores
    (tmp_path / "sampling.json").write_text(json.dumps({"seed": 7, "sampler": {"cfg_scale": 2.0}}))
    again = subprocess.run(
        [sys.executable, "-m", "avgkit", "eval", str(tmp_path / "samples.npz"), "-r", "digits:train",
         "--extractor", "digits", "--metrics", "fid", "--out", str(tmp_path / "report2")],
        capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    report2 = json.loads((tmp_path / "report2" / "eval.json").read_text())
    assert report2["seed"] == 7 and report2["sampling"]["sampler"] == {"cfg_scale": 2.0}
    missing = subprocess.run([sys.executable, "-m", "avgkit", "eval", str(tmp_path / "nope.npz")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "samples not found" in missing.stderr
    wrong = subprocess.run([sys.executable, "-m", "avgkit", "eval", str(tmp_path / "samples.npz"), "--extractor",
                            "digits", "--weights", str(tmp_path / "w.pth")], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "--weights is for the Inception extractor" in wrong.stderr
    no_ref = subprocess.run([sys.executable, "-m", "avgkit", "eval", str(tmp_path / "samples.npz"), "--extractor",
                             "digits", "--metrics", "fid"], capture_output=True, text=True, timeout=120)
    assert no_ref.returncode == 2 and "pass -r/--reference" in no_ref.stderr


def test_an_earlier_report_is_kept_unless_overwrite_and_out_must_be_a_folder(tmp_path):
    import pytest

    from avgkit.errors import AvgkitError
    from avgkit.eval import run_eval

    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "eval.json").write_text("{}")
    with pytest.raises(AvgkitError, match=r"eval.json already holds a report; pass --out .* or --overwrite"):
        run_eval(tmp_path / "samples.npz", "digits:train", tmp_path / "report", extractor="digits")
    assert (tmp_path / "report" / "eval.json").read_text() == "{}"
    (tmp_path / "file").write_text("x")
    with pytest.raises(AvgkitError, match=r"--out .*file is a file; pass a folder"):
        run_eval(tmp_path / "samples.npz", "digits:train", tmp_path / "file", extractor="digits")
