"""``train.compile: blocks`` on the transformer backbone (CPU): one trace for all blocks, the same losses as eager.

On a GPU ``train.compile: auto`` compiles the blocks of whatever backbone a recipe trains, this one included.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from avgkit.build import ARModel, build
from avgkit.plugins import get_registry
from avgkit.recipe import validate_recipe
from avgkit.train.data import StepBatches, TensorCodes
from avgkit.train.loop import Trainer
from avgkit.train.regions import find_blocks, is_compiled


def _trainer(compile_: str) -> Trainer:
    recipe = validate_recipe({
        "name": "compile-check", "tokenizer": "toy-patch:tiny", "backbone": "transformer:tiny",
        "conditioner": {"name": "toy-class", "modulate": True},
        "train": {"steps": 3, "batch_size": 8, "lr": 1e-3, "schedule": "constant", "log_every": 1,
                  "compile": compile_},
    })
    torch.manual_seed(0)
    comps = build(recipe, registry=get_registry())
    model = ARModel(comps.backbone, comps.conditioner)
    gen = torch.Generator().manual_seed(0)
    data = TensorCodes(torch.randint(0, 16, (32, comps.backbone.num_tokens), generator=gen),
                       torch.randint(0, 10, (32,), generator=gen))
    return Trainer(model, StepBatches(data, batch_size=8, grad_accum=1, rank=0, world_size=1, seed=0), recipe.train,
                   progress=False)


def test_compiled_blocks_train_like_eager(monkeypatch):
    real_compile = torch.compile  # aot_eager: Dynamo + AOTAutograd without inductor's C++ build
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend="aot_eager", fullgraph=True))
    torch._dynamo.reset()
    counters.clear()
    try:
        trainer = _trainer("blocks")
        blocks = find_blocks(trainer.model.backbone)
        assert blocks and all(is_compiled(b) for b in blocks)
        compiled = [r["loss"] for r in trainer.fit().records]
        assert 1 <= counters["stats"]["unique_graphs"] <= 2 and not counters["graph_break"]
    finally:
        torch._dynamo.reset()
    eager = [r["loss"] for r in _trainer("off").fit().records]
    assert compiled == pytest.approx(eager, rel=1e-5, abs=0)
