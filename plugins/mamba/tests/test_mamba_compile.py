"""``train.compile: true`` on the AiM backbone (torch kernels, CPU): it compiles and trains like eager.

The Triton scan under ``torch.compile`` is checked on the interpreter (``compile`` group of
test_mamba_triton_interpret.py).
"""

from __future__ import annotations

import pytest
import torch

from avgkit.build import ARModel, build
from avgkit.plugins import get_registry
from avgkit.recipe import validate_recipe
from avgkit.train.data import StepBatches, TensorCodes
from avgkit.train.loop import Trainer


def _losses(compile_: bool) -> list[float]:
    recipe = validate_recipe({
        "name": "compile-check",
        "tokenizer": "toy-patch",
        "backbone": {"name": "mamba2", "preset": "tiny", "impl": "torch"},
        "conditioner": {"name": "adaln-group", "groups": 2, "num_classes": 10},
        "sampler": {"name": "ar"},
        "train": {"steps": 3, "batch_size": 8, "lr": 1e-3, "schedule": "constant", "log_every": 1,
                  "compile": compile_},
    })
    torch.manual_seed(0)
    comps = build(recipe, registry=get_registry())
    model = ARModel(comps.backbone, comps.conditioner)
    gen = torch.Generator().manual_seed(0)
    data = TensorCodes(torch.randint(0, 16, (32, comps.backbone.num_tokens), generator=gen),
                       torch.randint(0, 10, (32,), generator=gen))
    batches = StepBatches(data, batch_size=8, grad_accum=1, rank=0, world_size=1, seed=0)
    trainer = Trainer(model, batches, recipe.train, progress=False)
    assert (trainer.forward is not model) == compile_
    return [r["loss"] for r in trainer.fit().records]


def test_train_compile_matches_eager(monkeypatch):
    # The trainer calls torch.compile(net) (inductor). Inductor works here too (same
    # losses) but its cold C++ build of this model takes about a minute on CPU, so the
    # test swaps in aot_eager (Dynamo + AOTAutograd, no codegen); fullgraph: no graph breaks.
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="aot_eager", fullgraph=True))
    try:
        compiled = _losses(True)
    finally:
        torch._dynamo.reset()
    assert compiled == pytest.approx(_losses(False), rel=1e-5, abs=0)
