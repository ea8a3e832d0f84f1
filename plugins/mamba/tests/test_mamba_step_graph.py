"""``train.cuda_graph`` on the AiM backbone: the step a graph records reads nothing on the host (CPU), and on a GPU
the replayed step trains like the eager one and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from avgkit.build import ARModel, build
from avgkit.plugins import get_registry
from avgkit.recipe import validate_recipe
from avgkit.testing.host_reads import host_reads
from avgkit.train.data import StepBatches, TensorCodes
from avgkit.train.loop import Trainer


def _trainer(run_dir=None, *, device: str = "cpu", accum: int = 1, callbacks=(), **train) -> Trainer:
    recipe = validate_recipe({
        "name": "graph-check",
        "tokenizer": "toy-patch",
        "backbone": {"name": "mamba2", "preset": "tiny"},
        "conditioner": {"name": "adaln-group", "groups": 2, "num_classes": 10, "label_dropout": 0.2},
        "sampler": {"name": "ar"},
        "train": {"steps": 6, "batch_size": 8, "grad_accum": accum, "lr": 1e-3, "schedule": "linear",
                  "log_every": 1, "ckpt_every": 3, "device": device, **train},
    })
    torch.manual_seed(0)
    comps = build(recipe, registry=get_registry())
    model = ARModel(comps.backbone, comps.conditioner).to(device)
    gen = torch.Generator().manual_seed(0)
    data = TensorCodes(torch.randint(0, 16, (48, comps.backbone.num_tokens), generator=gen),
                       torch.randint(0, 10, (48,), generator=gen))
    batches = StepBatches(data, batch_size=8, grad_accum=accum, rank=0, world_size=1, seed=0)
    return Trainer(model, batches, recipe.train, progress=False, run_dir=run_dir, callbacks=callbacks)


@pytest.mark.parametrize("accum", [1, 2])
def test_the_device_step_reads_no_tensor_on_the_host(accum):
    trainer = _trainer(accum=accum)
    # the update as on a GPU: the fused AdamW (the CPU's default one reads its step count), the lr a tensor
    groups = [{**g, "fused": True, "lr": torch.tensor(g["lr"])} for g in trainer.optimizer.param_groups]
    trainer.optimizer = torch.optim.AdamW(groups, fused=True)
    micro = trainer.batches.next_step()
    labels = trainer._drop_labels([m.labels for m in micro])
    assert host_reads(lambda: trainer._device_step([m.codes for m in micro], labels)) == []


def _losses(trainer: Trainer, resume: bool = False) -> list[float]:
    return [r["loss"] for r in trainer.fit(resume=resume).records]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile_", ["off", "blocks"])
def test_replayed_step_trains_like_eager_and_resumes_exactly(tmp_path, compile_):
    eager = _losses(_trainer(device="cuda", cuda_graph="off", compile=compile_))
    graphed_trainer = _trainer(tmp_path / "whole", device="cuda", cuda_graph="on", compile=compile_)
    assert graphed_trainer.graph is not None
    graphed = _losses(graphed_trainer)
    assert graphed_trainer.graph.graph is not None  # steps 4-6 were replays
    assert graphed == pytest.approx(eager, rel=1e-4)
    # stopped after the checkpoint at step 3, resumed: three eager warm-up steps, then a fresh capture
    def cut(step, record):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "cut", device="cuda", cuda_graph="on", compile=compile_, callbacks=[cut]).fit()
    resumed = _losses(_trainer(tmp_path / "cut", device="cuda", cuda_graph="on", compile=compile_), resume=True)
    assert resumed == pytest.approx(graphed[3:], rel=1e-6)
