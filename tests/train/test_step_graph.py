"""``train.cuda_graph``: when it applies, that the captured step reads no tensor on the host, the lr it reads.

The capture itself needs a GPU (``plugins/mamba/tests/test_mamba_step_graph.py``, marked gpu).
"""

from __future__ import annotations

import pytest
import torch
from train_helpers import random_codes, toy_model, train_cfg

from avgkit.errors import AvgkitError
from avgkit.runs.checkpoint import optimizer_from_safetensors, optimizer_to_safetensors
from avgkit.testing.host_reads import host_reads
from avgkit.train.data import StepBatches, TensorCodes
from avgkit.train.loop import Trainer
from avgkit.train.optim import set_lr
from avgkit.train.step_graph import StepGraph, make_capturable, resolve_cuda_graph

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_auto_is_on_for_one_gpu_process_with_class_labels():
    assert resolve_cuda_graph("auto", CUDA, distributed=False, class_labels=True)
    assert not resolve_cuda_graph("auto", CPU, distributed=False, class_labels=True)
    assert not resolve_cuda_graph("auto", CUDA, distributed=True, class_labels=True)
    assert not resolve_cuda_graph("auto", CUDA, distributed=False, class_labels=False)
    assert not resolve_cuda_graph("off", CUDA, distributed=False, class_labels=True)
    assert resolve_cuda_graph("on", CUDA, distributed=False, class_labels=True)


@pytest.mark.parametrize(("device", "distributed", "labels", "says"), [
    (CPU, False, True, "needs a CUDA device"), (CUDA, True, True, "single process"),
    (CUDA, False, False, "class labels")])
def test_on_where_it_cannot_apply_is_a_one_line_error(device, distributed, labels, says):
    with pytest.raises(AvgkitError, match=says) as err:
        resolve_cuda_graph("on", device, distributed=distributed, class_labels=labels)
    assert "\n" not in str(err.value) and "train.cuda_graph=auto or off" in str(err.value)


def test_trainer_on_the_cpu_says_why_on_cannot_apply(registry):
    batches = StepBatches(TensorCodes(*random_codes(16)), batch_size=8, grad_accum=1, rank=0, world_size=1, seed=0)
    with pytest.raises(AvgkitError, match="needs a CUDA device"):
        Trainer(toy_model(registry), batches, train_cfg(cuda_graph="on"), progress=False)


def test_host_reads_finds_item_and_nonzero():
    x = torch.tensor([0.0, 2.0])
    assert host_reads(lambda: float(x.sum())) == ["_local_scalar_dense"]
    assert host_reads(lambda: x.nonzero()) == ["nonzero"]
    assert host_reads(lambda: x * 2) == []


@pytest.mark.parametrize("accum", [1, 2])
def test_the_device_step_reads_no_tensor_on_the_host(registry, accum):
    """What the graph would record: forwards, backwards, clipping and the update of the trainer's step."""
    model = toy_model(registry, label_dropout=0.3)
    batches = StepBatches(TensorCodes(*random_codes(32)), batch_size=8, grad_accum=accum, rank=0, world_size=1,
                          seed=0)
    trainer = Trainer(model, batches, train_cfg(batch_size=8, grad_accum=accum), progress=False)
    # the update as on a GPU: the fused AdamW (the CPU's default one reads its step count), the lr a tensor
    groups = [{**g, "fused": True, "lr": torch.tensor(g["lr"])} for g in trainer.optimizer.param_groups]
    trainer.optimizer = torch.optim.AdamW(groups, fused=True)
    micro = batches.next_step()
    labels = trainer._drop_labels([m.labels for m in micro])
    before = [p.detach().clone() for p in model.parameters()]
    assert host_reads(lambda: trainer._device_step([m.codes for m in micro], labels)) == []
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))  # it did update


def test_a_tensor_lr_is_filled_and_saved_as_its_value():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=1e-3)
    make_capturable(opt)
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and opt.param_groups[0]["capturable"]
    set_lr(opt, 5e-4)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(5e-4)  # the same tensor: graph reads it
    tensors, meta = optimizer_to_safetensors(opt)
    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1.0)
    optimizer_from_safetensors(fresh, tensors, meta, path=None, fix="")  # type: ignore[arg-type]
    group = fresh.param_groups[0]
    assert group["lr"] == pytest.approx(5e-4) and not isinstance(group["lr"], torch.Tensor)
    assert group["capturable"] is False  # a checkpoint written by a graphed run resumes anywhere, the CPU included


def test_off_a_gpu_the_step_runs_eagerly_through_its_buffers():
    """Each call copies its inputs into the same buffers and starts from fresh gradients, like a plain step."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (a, b))

    def update(model, opt, x):
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        return loss.detach()

    graphed = StepGraph(lambda x: (update(b, opt_b, x),), opt_b, device=CPU)
    for i in range(4):
        x = torch.randn(3, 4, generator=torch.Generator().manual_seed(i))
        want = update(a, opt_a, x)
        opt_a.zero_grad(set_to_none=True)
        (got,) = graphed(x)
        assert torch.equal(got, want)
    assert torch.equal(a.weight, b.weight) and graphed.graph is None and len(graphed.inputs) == 1
    with pytest.raises(AvgkitError, match="fixed-size batches"):
        graphed(torch.randn(2, 4))


def test_a_bare_on_or_off_in_yaml_means_the_setting():
    import yaml

    from avgkit.recipe import TrainSection

    assert TrainSection(**yaml.safe_load("cuda_graph: off")).cuda_graph == "off"  # YAML reads off as false
    assert TrainSection(**yaml.safe_load("cuda_graph: on")).cuda_graph == "on"
