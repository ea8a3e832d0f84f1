"""A recipe trained for a few steps on random codes: for tests of a backbone under the trainer's options.

``synthetic_trainer(raw)`` builds the recipe's components (seed 0), wraps them as the
trainer does and feeds it 32 random code sequences; a plugin's test can then compare
``trainer.fit()`` losses between settings (``train.compile: blocks`` against ``off``, say).
"""

from __future__ import annotations

from typing import Any

import torch

from avgkit.build import ARModel, build
from avgkit.plugins import get_registry
from avgkit.recipe import validate_recipe
from avgkit.train.data import StepBatches, TensorCodes
from avgkit.train.loop import Trainer

__all__ = ["synthetic_trainer"]


def synthetic_trainer(raw: dict[str, Any], *, items: int = 32, classes: int = 10, seed: int = 0) -> Trainer:
    """A :class:`Trainer` for the recipe ``raw`` (a dict as in YAML) over ``items`` random code sequences."""
    recipe = validate_recipe(raw)
    torch.manual_seed(seed)
    comps = build(recipe, registry=get_registry())
    model = ARModel(comps.backbone, comps.conditioner)
    gen = torch.Generator().manual_seed(seed)
    data = TensorCodes(torch.randint(0, comps.backbone.vocab_size, (items, comps.backbone.num_tokens), generator=gen),
                       torch.randint(0, classes, (items,), generator=gen))
    cfg = recipe.train
    batches = StepBatches(data, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, rank=0, world_size=1,
                          seed=cfg.seed)
    return Trainer(model, batches, cfg, progress=False)
