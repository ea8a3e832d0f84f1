"""Toy run directories for the sampling tests (toy components only; no plugin needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TOY_RECIPE: dict[str, Any] = {
    "name": "toy-sample",
    "tokenizer": {"name": "toy-patch", "image_size": 8, "patch": 2, "levels": 16},
    "backbone": "toy-gru:tiny",
    "conditioner": {"name": "toy-class", "num_classes": 10},
    "sampler": {"name": "ar", "cfg_scale": 2.0, "top_k": 8, "top_p": 0.95},
    "eval": {"batch_size": 4},
}


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random (zero-initialised tables would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def make_run_dir(root: Path, *, steps: tuple[int, ...] = (5,), ema: bool = False, recipe: dict | None = None) -> Path:
    """A run directory in ``avgkit train``'s layout with random toy weights per step."""
    from avgkit.build import build
    from avgkit.recipe import validate_recipe
    from avgkit.runs.checkpoint import save_checkpoint

    r = validate_recipe(recipe or TOY_RECIPE)
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipe.yaml").write_text(r.to_yaml())
    for step in steps:
        comps = build(r)
        model = comps.model
        _randomize(model, seed=step)
        ema_model = None
        if ema:
            ema_model = build(r).model
            _randomize(ema_model, seed=1000 + step)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        save_checkpoint(root / "checkpoints", step, model=model, optimizer=opt, trainer_state={"step": step},
                        ema=ema_model)
    return root
