"""The conditioner ablation as a user runs it: one sweep over the conditioner line, then compare."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

RECIPE = """\
name: tiny-ablation
tokenizer: {name: toy-patch, image_size: 32, patch: 8, levels: 16}
backbone: {name: mamba2, preset: tiny}
conditioner: {name: adaln-group, groups: 2}
sampler: {name: ar, cfg_scale: 2.0}
data: {source: digits, num_classes: 10, store: null}
train: {steps: 12, batch_size: 32, lr: 3.0e-3, log_every: 4, ckpt_every: 12, precision: fp32}
eval: {samples_per_class: 1, batch_size: 10}
"""


def test_sweep_over_conditioners_then_compare(tmp_path):
    recipe = tmp_path / "tiny-ablation.yaml"
    recipe.write_text(textwrap.dedent(RECIPE))
    out = tmp_path / "sweep"
    forms = ["adaln", "adaln-single", "adaln-group", "class-token"]
    run = subprocess.run(
        [sys.executable, "-m", "avgkit", "sweep", str(recipe), "-g", "conditioner=" + ",".join(forms), "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    rows = json.loads((out / "compare.json").read_text())
    assert [r["conditioner"].split()[0] for r in rows] == forms
    params = {r["conditioner"].split()[0]: r["parameters"] for r in rows}
    # the forms differ only in the conditioner, and their sizes are ordered as the designs say
    assert params["class-token"] < params["adaln-single"] < params["adaln-group"] < params["adaln"] or \
        params["class-token"] < params["adaln-single"] < params["adaln"]
    for r in rows:
        assert r["steps"] == 12 and r["final_loss"] is not None and r["tokens_per_s"] > 0
    assert (out / "losses.png").stat().st_size > 1000
    assert "| run |" in (out / "compare.md").read_text()
    again = subprocess.run([sys.executable, "-m", "avgkit", "compare", *[str(out / d) for d in sorted(p.name for p in out.iterdir() if p.is_dir())],
                            "--out", str(tmp_path / "cmp")], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "final_loss" in again.stdout and (tmp_path / "cmp" / "losses.png").exists()
    # a shell glob over the sweep folder also matches compare.json/.md and losses.png: skipped
    globbed = subprocess.run([sys.executable, "-m", "avgkit", "compare", *map(str, sorted(out.iterdir())),
                              "--out", str(tmp_path / "cmp2")], capture_output=True, text=True, timeout=120)
    assert globbed.returncode == 0 and "skipping 3 file(s)" in globbed.stderr, globbed.stderr[-2000:]
    # --resume keeps finished points as they are: no sampling or evaluation is redone
    stamps = {d: (d / "eval.json").stat().st_mtime_ns for d in out.iterdir() if d.is_dir()}
    resumed = subprocess.run(
        [sys.executable, "-m", "avgkit", "sweep", str(recipe), "-g", "conditioner=" + ",".join(forms), "--out", str(out),
         "--resume"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("already finished; skipped") == len(forms)
    assert stamps == {d: (d / "eval.json").stat().st_mtime_ns for d in stamps}
    # the same sweep with other settings is refused, not reported with the old results
    changed = subprocess.run(
        [sys.executable, "-m", "avgkit", "sweep", str(recipe), "-g", "conditioner=" + ",".join(forms), "--out", str(out),
         "-s", "train.steps=13"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert changed.returncode == 2 and "finished with another recipe (train.steps: 12 -> 13)" in changed.stderr
