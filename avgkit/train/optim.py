"""Optimizer, learning-rate schedule and weight EMA for the generic trainer.

Weight-decay rule (applied by :func:`param_groups`, by module type and identity, never
by parameter name):

* **decay**: the weight matrices of modules that multiply their input by a learned
  matrix: ``nn.Linear``, ``nn.Conv1d/2d/3d`` (and transposed), ``nn.Bilinear``, the
  ``weight_*`` matrices of ``nn.RNNBase`` (GRU/LSTM/RNN) and
  ``nn.MultiheadAttention.in_proj_weight`` (or ``*_proj_weight``), with ``ndim >= 2``;
* **no decay**: everything else: biases, norm weights, embedding tables (every tensor
  that the backbone's or conditioner's ``embedding_parameters()`` returns, including a
  head tied to the token table), and free-standing parameters such as Mamba's
  ``A_log``, ``D``, ``dt_bias`` or adaLN scale-shift tables, whatever their shape.

A free-standing ``nn.Parameter`` is not a linear map's weight, so it is never decayed;
a backbone that wants decay on one should hold it in a linear module.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from avgkit.errors import AvgkitError
from avgkit.recipe import TrainSection

_MATRIX_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def _is_matrix_weight(module: nn.Module, local_name: str, param: nn.Parameter) -> bool:
    if param.ndim < 2:
        return False
    if isinstance(module, _MATRIX_MODULES):
        return local_name == "weight"
    if isinstance(module, nn.RNNBase):
        return local_name.startswith("weight_")
    if isinstance(module, nn.MultiheadAttention):
        return local_name.endswith("proj_weight")
    return False


@dataclass
class ParamGroups:
    """Parameters split by the weight-decay rule, with their qualified names."""

    decay: list[nn.Parameter]
    no_decay: list[nn.Parameter]
    decay_names: list[str]
    no_decay_names: list[str]

    def summary(self) -> str:
        nd = sum(p.numel() for p in self.decay)
        nn_ = sum(p.numel() for p in self.no_decay)
        return (
            f"weight decay on {len(self.decay)} tensors ({nd:,} params), "
            f"none on {len(self.no_decay)} tensors ({nn_:,} params)"
        )


def embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Embedding tables of a model: its own ``embedding_parameters()`` or its parts'."""
    own = getattr(model, "embedding_parameters", None)
    if callable(own):
        return list(own())
    out: list[nn.Parameter] = []
    for child in model.modules():
        fn = getattr(child, "embedding_parameters", None)
        if child is not model and callable(fn):
            out.extend(fn())
    return out


def param_groups(model: nn.Module) -> ParamGroups:
    """Split trainable parameters into decay / no-decay groups (see module docstring).

    Tied parameters appear once, under the first name that reaches them.
    """
    embeddings = {id(p) for p in embedding_parameters(model)}
    decay_ids: set[int] = set()
    for module in model.modules():
        for local_name, p in module.named_parameters(recurse=False):
            if _is_matrix_weight(module, local_name, p) and id(p) not in embeddings:
                decay_ids.add(id(p))
    groups = ParamGroups([], [], [], [])
    for name, p in model.named_parameters():  # de-duplicates tied parameters
        if not p.requires_grad:
            continue
        if id(p) in decay_ids:
            groups.decay.append(p)
            groups.decay_names.append(name)
        else:
            groups.no_decay.append(p)
            groups.no_decay_names.append(name)
    return groups


def peak_lr(cfg: TrainSection) -> float:
    """``cfg.lr``, scaled by ``batch_size / base_batch`` when ``lr_scaling`` is linear."""
    if cfg.lr_scaling == "linear":
        return cfg.lr * cfg.batch_size / cfg.base_batch
    return cfg.lr


def lr_factor(step: int, cfg: TrainSection) -> float:
    """Multiplier of the peak lr for the update that takes ``step`` -> ``step + 1``.

    Linear warmup over ``warmup_steps`` updates (the first update uses
    ``1 / warmup_steps``), then constant, linear or cosine decay reaching
    ``min_lr_ratio`` at the last step.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return floor + (1.0 - floor) * (1.0 - t)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def lr_at(step: int, cfg: TrainSection) -> float:
    return peak_lr(cfg) * lr_factor(step, cfg)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's learning rate; a tensor one (a graph-captured step reads it there) is filled in place."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def build_optimizer(model: nn.Module, cfg: TrainSection, *, device: torch.device | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the recipe's betas and weight decay.

    The fused implementation is used on CUDA; elsewhere the default one.
    """
    groups = param_groups(model)
    if not groups.decay and not groups.no_decay:
        raise AvgkitError("the model has no trainable parameters; check the backbone and conditioner")
    spec: list[dict[str, Any]] = []
    if groups.decay:
        spec.append({"params": groups.decay, "weight_decay": cfg.weight_decay, "name": "decay"})
    if groups.no_decay:
        spec.append({"params": groups.no_decay, "weight_decay": 0.0, "name": "no_decay"})
    fused = device is not None and device.type == "cuda"
    return torch.optim.AdamW(spec, lr=lr_at(0, cfg), betas=cfg.betas, fused=fused or None)


M = TypeVar("M", bound=nn.Module)


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of EMA update number ``updates`` (0-based): ``min(decay, (1 + n) / (10 + n))``.

    The warm-up keeps a short run's average from being dominated by the random
    initialisation: the first update keeps 10 % of the old weights, the 90th about 92 %,
    and ``decay`` (e.g. 0.9999) applies once the warm-up value exceeds it.
    """
    return min(decay, (1.0 + updates) / (10.0 + updates))


class EMA(Generic[M]):
    """Exponential moving average of a model's weights, kept in fp32, with a warm-up.

    ``module`` is a full copy of the model (same structure and state-dict keys, ties
    preserved) so it can be sampled from directly; buffers are copied, not averaged.
    Update ``n`` uses :func:`ema_decay_at` (``decay`` after the warm-up).
    """

    def __init__(self, model: M, decay: float) -> None:
        self.decay = decay
        self.module: M = copy.deepcopy(model).float().eval()
        self.module.requires_grad_(False)
        self._pairs = self._match(model)

    def _match(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        src = dict(model.named_parameters())
        dst = dict(self.module.named_parameters())
        return [dst[n] for n in src], [src[n] for n in src]

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int | None = None) -> None:
        """One EMA step; ``updates`` counts the earlier ones (``None``: no warm-up, plain ``decay``)."""
        decay = self.decay if updates is None else ema_decay_at(self.decay, updates)
        ema, live = self._pairs
        torch._foreach_lerp_(ema, [p.detach().float() for p in live], 1.0 - decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)


def iter_unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for p in params:
        seen.setdefault(id(p), p)
    return list(seen.values())
