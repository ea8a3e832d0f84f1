"""``train.compile: blocks`` on the transformer backbone (CPU): one trace for all blocks, the same losses as eager.

On a GPU ``train.compile: auto`` compiles the blocks of whatever backbone a recipe trains, this one included.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from avgkit.testing.training import synthetic_trainer
from avgkit.train.loop import Trainer
from avgkit.train.regions import find_blocks, is_compiled


def _trainer(compile_: str) -> Trainer:
    return synthetic_trainer({
        "name": "compile-check", "tokenizer": "toy-patch:tiny", "backbone": "transformer:tiny",
        "conditioner": {"name": "toy-class", "modulate": True},
        "train": {"steps": 3, "batch_size": 8, "lr": 1e-3, "schedule": "constant", "log_every": 1,
                  "compile": compile_},
    })


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
