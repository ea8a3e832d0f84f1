"""The README's main job, shortened to fit CI: the shipped digits recipe end to end.

The full recipe (`avgkit train digits`) reaches about 98% class accuracy in under
five minutes on two cores; here the same recipe with fewer steps must beat 50% and the
untrained model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

SHORT = ["tokenizer.train.steps=150", "train.steps=250", "train.ckpt_every=250", "eval.samples_per_class=20"]


def test_digits_recipe_learns_the_classes(tmp_path):
    paths = [f"output_dir={tmp_path / 'run'}", f"tokenizer.weights={tmp_path / 'tok.safetensors'}",
             f"data.store={tmp_path / 'codes.zarr'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run([sys.executable, "-m", "avgkit", "train", "digits", *paths, *SHORT],
                         capture_output=True, text=True, timeout=400, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "eval.json").read_text())
    trained = record["class_accuracy"]
    assert record["samples"] == 200 and record["classifier"].startswith("digits")

    # the same recipe, untrained, sampled and scored the same way
    from avgkit.build import build
    from avgkit.eval.digits import DigitClassifier
    from avgkit.recipe import load_recipe
    from avgkit.sample.grids import generate_images

    recipe = load_recipe("digits", [*paths, *SHORT])
    torch.manual_seed(recipe.train.seed)
    comps = build(recipe)
    labels = torch.arange(10).repeat_interleave(20)
    images = generate_images(comps.backbone.eval(), comps.conditioner.eval(), comps.sampler, comps.tokenizer,
                             labels, seed=0, batch_size=200, device=torch.device("cpu"))
    untrained = float((torch.as_tensor(DigitClassifier().predict(images)) == labels).float().mean())
    assert trained >= 0.5, f"trained accuracy {trained:.3f}"
    assert trained > untrained + 0.2, f"trained {trained:.3f} vs untrained {untrained:.3f}"
    assert (tmp_path / "run" / "samples.png").stat().st_size > 1000
