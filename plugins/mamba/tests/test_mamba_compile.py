"""``train.compile`` (model, blocks) on the AiM backbone (torch kernels, CPU): it compiles and trains like eager.

The Triton scan under ``torch.compile`` is checked on the interpreter (``compile`` group of
test_mamba_triton_interpret.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from avgkit.build import ARModel, build
from avgkit.plugins import get_registry
from avgkit.recipe import validate_recipe
from avgkit.train.data import StepBatches, TensorCodes
from avgkit.train.loop import Trainer
from avgkit.train.regions import is_compiled


def _trainer(compile_: str) -> Trainer:
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
    return Trainer(model, batches, recipe.train, progress=False)


def _losses(trainer: Trainer) -> list[float]:
    return [r["loss"] for r in trainer.fit().records]


@pytest.fixture
def aot_eager(monkeypatch):
    # The trainer compiles with inductor. Inductor works here too (same losses) but its
    # cold C++ build of this model takes about a minute on CPU, so the tests swap in
    # aot_eager (Dynamo + AOTAutograd, no codegen); fullgraph: no graph breaks.
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend="aot_eager", fullgraph=True))
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_train_compile_matches_eager(aot_eager):
    trainer = _trainer("model")
    assert trainer.forward is not trainer.model and not trainer.model.compile_loss  # the loss kernel: blocks only
    assert _losses(trainer) == pytest.approx(_losses(_trainer("off")), rel=1e-5, abs=0)


def test_train_compile_blocks_matches_eager_with_one_trace_for_all_blocks(aot_eager):
    trainer = _trainer("blocks")
    blocks = trainer.model.backbone.layers
    assert trainer.forward is trainer.model and all(is_compiled(b) for b in blocks)
    assert trainer.model.compile_loss  # its kernel compiles on a GPU; the CPU keeps the eager form
    assert _losses(trainer) == pytest.approx(_losses(_trainer("off")), rel=1e-5, abs=0)
    # the first block (no residual yet) and the rest: two traces for the model, however deep
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]


def test_compiled_blocks_leave_sampling_and_copies_eager(aot_eager):
    trainer = _trainer("blocks")
    model = trainer.model
    assert not any(is_compiled(b) for b in copy.deepcopy(model).backbone.layers)  # an EMA copy runs eager
    with torch.no_grad():  # validation and sampling: no trace, so the same numbers as an uncompiled model
        model(torch.zeros(2, model.backbone.num_tokens, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    assert counters["stats"]["calls_captured"] == 0


def test_compiled_blocks_inside_ddp_train_like_eager(aot_eager, tmp_path):
    """DDP wraps the model after its blocks are compiled (as the trainer does) and trains like eager DDP.

    One gloo process: the reducer's hooks and bucketing run through the compiled blocks' backward
    (where DDP and compiled regions fail, they fail there); the all-reduce itself is trivial.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from avgkit.train.regions import compile_blocks

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        eager = _trainer("off").model
        compiled = copy.deepcopy(eager)
        compile_blocks(compiled.backbone)
        gen = torch.Generator().manual_seed(0)
        codes = torch.randint(0, 16, (4, eager.backbone.num_tokens), generator=gen)
        labels = torch.randint(0, 10, (4,), generator=gen)
        results = []
        for model in (eager, compiled):
            net = DistributedDataParallel(model)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            losses = []
            for _ in range(3):
                loss = net(codes, labels, loss=True)
                loss.backward()
                opt.step()
                opt.zero_grad()
                losses.append(loss.item())
            results.append((losses, [p.detach().clone() for p in model.parameters()]))
        assert results[1][0] == pytest.approx(results[0][0], rel=1e-5, abs=0)
        for a, b in zip(results[1][1], results[0][1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        assert counters["stats"]["unique_graphs"] == 2  # the blocks were compiled, not run eager
    finally:
        dist.destroy_process_group()
