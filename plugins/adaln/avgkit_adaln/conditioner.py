"""Class-conditional conditioners: the adaLN family and the class token alone.

All of them put the class embedding at sequence position 0 (``prefix``, P = 1) and
keep a null class (row ``num_classes``) for classifier-free guidance. They differ in
the per-block modulation (shift, scale, gate) they hand the backbone:

* ``adaln`` (per layer, AiM-B): block i has its own zero-initialised
  ``SiLU -> Linear(d, 3d)`` of the class embedding.
* ``adaln-group`` (AiM-L/XL/1B, G = 4): one shared ``SiLU -> Linear(d, G*3d)`` gives
  G sets; block i takes set ``i mod G`` and adds its own learned ``(3, d)`` table.
* ``adaln-single``: adaLN-group with G = 1.
* ``class-token``: no modulation at all (in-context conditioning, as in LlamaGen).

The adaLN forms also modulate the final norm with a zero-initialised
``SiLU -> Linear(d, 2d)`` (shift, scale). Parameter names follow the official AiM
checkpoints (see :mod:`avgkit_adaln.convert`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from avgkit.interfaces import Conditioner, Conditioning
from avgkit.registry import ConditionerConfig


class ClassTokenConfig(ConditionerConfig):
    embed_std: float = Field(0.02, gt=0, description="init std of the class table")


class AdaLNConfig(ClassTokenConfig):
    final_modulation: bool = Field(True, description="modulate the backbone's final norm too")


class AdaLNGroupConfig(AdaLNConfig):
    groups: int = Field(4, ge=1, description="G sets of (shift, scale, gate); block i uses set i mod G")


class AdaLNSingleConfig(AdaLNConfig):
    """adaLN-group with one set shared by every block."""


class LabelEmbedding(nn.Module):
    """Class table with one extra row, the null class used for CFG."""

    def __init__(self, num_classes: int, dim: int, std: float) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.embedding_table.weight, std=std)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding_table(labels)


def _silu_linear(dim: int, out: int, zero: bool) -> nn.Sequential:
    seq = nn.Sequential(nn.SiLU(), nn.Linear(dim, out))
    if zero:
        nn.init.zeros_(seq[1].weight)
    nn.init.zeros_(seq[1].bias)
    return seq


class ClassTokenConditioner(Conditioner):
    """The class embedding as the first sequence position; no modulation."""

    def __init__(self, config: ClassTokenConfig, *, dim: int, num_layers: int) -> None:
        super().__init__()
        self.config = config
        self.num_classes, self.dim, self.num_layers = config.num_classes, dim, num_layers
        self.label_dropout = config.label_dropout
        self.cls_embed = LabelEmbedding(config.num_classes, dim, config.embed_std)

    def forward(self, labels: Tensor) -> Conditioning:
        return Conditioning(prefix=self.cls_embed(labels)[:, None])

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.cls_embed.embedding_table.weight]


class _AdaLNBase(ClassTokenConditioner):
    def __init__(self, config: AdaLNConfig, *, dim: int, num_layers: int) -> None:
        super().__init__(config, dim=dim, num_layers=num_layers)
        self.final_adaLN_modulation = _silu_linear(dim, 2 * dim, zero=True) if config.final_modulation else None

    def layer_modulation(self, c: Tensor) -> Tensor:
        """``(L, B, 3, D)`` (shift, scale, gate) for every block, from class embeddings ``c``."""
        raise NotImplementedError

    def forward(self, labels: Tensor) -> Conditioning:
        c = self.cls_embed(labels)
        final = None
        if self.final_adaLN_modulation is not None:
            final = self.final_adaLN_modulation(c).view(-1, 2, self.dim)
        return Conditioning(prefix=c[:, None], layers=self.layer_modulation(c), final=final)


class AdaLNConditioner(_AdaLNBase):
    """Per-layer adaLN: a separate zero-initialised projection for every block."""

    def __init__(self, config: AdaLNConfig, *, dim: int, num_layers: int) -> None:
        super().__init__(config, dim=dim, num_layers=num_layers)
        self.adaLN_modulation = nn.ModuleList(_silu_linear(dim, 3 * dim, zero=True) for _ in range(num_layers))

    def layer_modulation(self, c: Tensor) -> Tensor:
        # one batched matmul over the stacked per-layer weights
        w = torch.stack([m[1].weight for m in self.adaLN_modulation])  # (L, 3D, D)
        b = torch.stack([m[1].bias for m in self.adaLN_modulation])  # (L, 3D)
        out = torch.einsum("bd,lod->lbo", F.silu(c), w) + b[:, None]
        return out.view(self.num_layers, -1, 3, self.dim)


class AdaLNGroupConditioner(_AdaLNBase):
    """adaLN-group(G): one shared projection to G sets plus a learned table per block."""

    def __init__(self, config: AdaLNGroupConfig | AdaLNSingleConfig, *, dim: int, num_layers: int) -> None:
        super().__init__(config, dim=dim, num_layers=num_layers)
        self.groups = getattr(config, "groups", 1)
        # default nn.Linear init for the shared projection, zero bias (as the reference)
        self.adaln_group = nn.Sequential(nn.SiLU(), nn.Linear(dim, self.groups * 3 * dim))
        nn.init.zeros_(self.adaln_group[1].bias)
        self.scale_shift_table = nn.Parameter(torch.randn(num_layers, 3, dim) / dim**0.5)
        self.register_buffer("layer_group", torch.arange(num_layers) % self.groups, persistent=False)

    def layer_modulation(self, c: Tensor) -> Tensor:
        sets = self.adaln_group(c).view(-1, self.groups, 3, self.dim)  # (B, G, 3, D)
        per_layer = sets.index_select(1, self.layer_group)  # (B, L, 3, D): block i takes set i mod G
        return per_layer.transpose(0, 1) + self.scale_shift_table[:, None]

    def to_per_layer(self) -> AdaLNConditioner:
        """The same function as a per-layer adaLN conditioner (exact: set i mod G + table i)."""
        cfg = AdaLNConfig(**{k: v for k, v in self.config.model_dump().items() if k in AdaLNConfig.model_fields})
        out = AdaLNConditioner(cfg, dim=self.dim, num_layers=self.num_layers).to(self.scale_shift_table)
        w = self.adaln_group[1].weight.view(self.groups, 3 * self.dim, self.dim)
        b = self.adaln_group[1].bias.view(self.groups, 3 * self.dim)
        with torch.no_grad():
            out.cls_embed.load_state_dict(self.cls_embed.state_dict())
            if self.final_adaLN_modulation is not None:
                out.final_adaLN_modulation.load_state_dict(self.final_adaLN_modulation.state_dict())
            for i, m in enumerate(out.adaLN_modulation):
                g = i % self.groups
                m[1].weight.copy_(w[g])
                m[1].bias.copy_(b[g] + self.scale_shift_table[i].flatten())
        return out
