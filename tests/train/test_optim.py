"""Weight-decay groups, learning-rate schedules and EMA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from train_helpers import toy_model, train_cfg

from avgkit.train.optim import EMA, build_optimizer, lr_at, lr_factor, param_groups, peak_lr


class _RMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


class _MambaLikeBlock(nn.Module):
    """The parameter shapes of a Mamba-2 block with adaLN-group tables."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.norm = _RMSNorm(d)
        self.in_proj = nn.Linear(d, 4 * d, bias=False)
        self.conv1d = nn.Conv1d(2 * d, 2 * d, 4, groups=2 * d)
        self.A_log = nn.Parameter(torch.zeros(2))
        self.D = nn.Parameter(torch.ones(2))
        self.dt_bias = nn.Parameter(torch.zeros(2))
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 3, d))
        self.out_proj = nn.Linear(2 * d, d, bias=False)


class _TinyLM(nn.Module):
    def __init__(self, vocab: int = 11, d: int = 8) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(5, d))
        self.block = _MambaLikeBlock(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.word.weight  # tied

    def embedding_parameters(self):
        return [self.word.weight, self.pos]


def test_groups_on_mamba_like_model():
    g = param_groups(_TinyLM())
    assert sorted(g.decay_names) == ["block.conv1d.weight", "block.in_proj.weight", "block.out_proj.weight"]
    assert sorted(g.no_decay_names) == sorted(
        [
            "word.weight",
            "pos",
            "block.norm.weight",
            "block.conv1d.bias",
            "block.A_log",
            "block.D",
            "block.dt_bias",
            "block.scale_shift_table",
        ]
    )
    # the tied head is the embedding table: present once, never decayed
    assert "head.weight" not in g.decay_names + g.no_decay_names


def test_groups_on_toy_model(registry):
    model = toy_model(registry)
    g = param_groups(model)
    decay = set(g.decay_names)
    assert "backbone.tok.weight" in g.no_decay_names  # token table
    assert "conditioner.embed.weight" in g.no_decay_names  # class table
    assert "conditioner.tables" in g.no_decay_names  # per-layer modulation tables (3-d)
    assert {"backbone.head.weight", "conditioner.mod.weight", "backbone.grus.0.weight_ih_l0"} <= decay
    assert not any(n.endswith("bias") or "bias_" in n for n in decay)
    # every trainable parameter is in exactly one group
    total = {id(p) for p in model.parameters()}
    assert {id(p) for p in g.decay} | {id(p) for p in g.no_decay} == total
    assert not {id(p) for p in g.decay} & {id(p) for p in g.no_decay}


def test_optimizer_applies_decay_per_group(registry):
    model = toy_model(registry)
    opt = build_optimizer(model, train_cfg(weight_decay=0.05, betas=(0.9, 0.95)))
    wd = {group["name"]: group["weight_decay"] for group in opt.param_groups}
    assert wd == {"decay": 0.05, "no_decay": 0.0}
    assert all(tuple(group["betas"]) == (0.9, 0.95) for group in opt.param_groups)


def test_linear_lr_scaling():
    cfg = train_cfg(lr=1e-4, lr_scaling="linear", batch_size=2048, base_batch=256)
    assert peak_lr(cfg) == pytest.approx(8e-4)
    assert peak_lr(train_cfg(lr=1e-4, batch_size=2048)) == pytest.approx(1e-4)


def test_warmup_then_linear_decay():
    cfg = train_cfg(steps=110, warmup_steps=10, schedule="linear", min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(4, cfg) == pytest.approx(0.5)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.55)  # halfway from 1 to 0.1
    assert lr_factor(110, cfg) == pytest.approx(0.1)


def test_cosine_and_constant():
    cfg = train_cfg(steps=100, schedule="cosine", min_lr_ratio=0.0, lr=2.0)
    assert lr_at(0, cfg) == pytest.approx(2.0)
    assert lr_at(50, cfg) == pytest.approx(1.0)
    assert lr_at(25, cfg) == pytest.approx(1.0 + math.cos(math.pi / 4))
    assert lr_at(100, cfg) == pytest.approx(0.0, abs=1e-12)
    const = train_cfg(steps=100, schedule="constant", warmup_steps=4)
    assert [lr_factor(s, const) for s in (0, 3, 50, 99)] == pytest.approx([0.25, 1.0, 1.0, 1.0])


def test_ema_is_fp32_average_and_keeps_ties():
    live = _TinyLM().to(torch.bfloat16)
    ema = EMA(live, decay=0.5)
    assert all(p.dtype == torch.float32 for p in ema.module.parameters())
    assert ema.module.head.weight is ema.module.word.weight
    before = ema.module.block.in_proj.weight.clone()
    with torch.no_grad():
        live.block.in_proj.weight.add_(1.0)
    ema.update(live)
    expected = 0.5 * before + 0.5 * live.block.in_proj.weight.float()
    torch.testing.assert_close(ema.module.block.in_proj.weight, expected)


def test_ema_warms_up_so_a_short_run_is_not_its_initialisation():
    from avgkit.train.optim import ema_decay_at

    assert [ema_decay_at(0.999, n) for n in (0, 1, 90)] == pytest.approx([0.1, 2 / 11, 91 / 100])
    assert ema_decay_at(0.9, 10_000) == 0.9
    live = _TinyLM()
    ema = EMA(live, decay=0.999)
    start = ema.module.block.in_proj.weight.clone()
    with torch.no_grad():
        live.block.in_proj.weight.add_(1.0)
    ema.update(live, 0)  # the first update keeps a tenth of the start, not 99.9 %
    torch.testing.assert_close(ema.module.block.in_proj.weight, 0.1 * start + 0.9 * live.block.in_proj.weight)


def test_groups_on_aim_model_when_installed():
    """The rule on the real AiM-L stack (Mamba-2 + adaLN-group), when those plugins are installed."""
    from avgkit.errors import AvgkitError
    from avgkit.plugins import PluginManager

    try:
        registry = PluginManager().registry
        backbone_spec, cond_spec = registry.get("backbone", "mamba2"), registry.get("conditioner", "adaln-group")
    except AvgkitError as err:
        pytest.skip(f"AiM plugins not installed: {err}")
    with torch.device("meta"):
        backbone = backbone_spec.factory(backbone_spec.resolve("aim-l", {"vocab_size": 16384, "num_tokens": 256}))
        cond = cond_spec.factory(
            cond_spec.resolve(None, {"num_classes": 1000}), dim=backbone.dim, num_layers=backbone.num_layers
        )
    g = param_groups(nn.ModuleDict({"backbone": backbone, "conditioner": cond}))
    decayed = {n.split(".")[-2] + "." + n.split(".")[-1] for n in g.decay_names}
    assert {"in_proj.weight", "out_proj.weight"} <= decayed
    for name in g.decay_names:  # nothing 1-d, no table, no embedding is decayed
        assert not any(k in name for k in ("A_log", ".D", "dt_bias", "norm", "scale_shift_table", "embed", "bias"))
    assert sum(p.numel() for p in g.decay) > 0.9 * sum(p.numel() for p in g.decay + g.no_decay)
