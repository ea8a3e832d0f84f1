"""Tiny built-in components so the core can be tested with no plugin installed.

* ``toy-patch`` tokenizer: each ``patch x patch`` block's mean intensity quantised to
  ``levels`` codes (lossy, no parameters).
* ``toy-gru`` backbone: GRU layers that honour per-layer adaLN modulation, with a
  recurrent decoding state.
* ``toy-class`` conditioner: a class-embedding prefix, optionally with adaLN-single
  modulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from avgkit.interfaces import Backbone, Conditioner, Conditioning, Modulation, Tokenizer
from avgkit.registry import BackboneConfig, ComponentConfig, ConditionerConfig
from avgkit.sizes import ImageSize, image_hw


# --------------------------------------------------------------------------- tokenizer
class ToyPatchConfig(ComponentConfig):
    image_size: ImageSize = Field(8, description="S (square) or [H, W], in pixels")
    patch: int = Field(2, ge=1)
    channels: int = Field(1, ge=1)
    levels: int = Field(16, ge=2, description="codebook size")


class ToyPatchTokenizer(Tokenizer):
    def __init__(self, config: ToyPatchConfig | None = None) -> None:
        super().__init__()
        c = config or ToyPatchConfig()
        h, w = image_hw(c.image_size)
        if h % c.patch or w % c.patch:
            raise ValueError("toy-patch: image_size must be a multiple of patch")
        self.config = c
        self.codebook_size = c.levels
        self.image_size = c.image_size
        self.channels = c.channels
        self.grid = (h // c.patch, w // c.patch)

    def encode(self, images: Tensor) -> Tensor:
        m = F.avg_pool2d(images.float().mean(1, keepdim=True), self.config.patch)
        q = ((m.clamp(-1, 1) + 1) / 2 * (self.codebook_size - 1)).round().long()
        return q.flatten(1)

    def decode(self, codes: Tensor) -> Tensor:
        v = codes.float() / (self.codebook_size - 1) * 2 - 1
        v = v.view(-1, 1, *self.grid)
        img = F.interpolate(v, scale_factor=self.config.patch, mode="nearest")
        return img.expand(-1, self.channels, -1, -1).contiguous()


# --------------------------------------------------------------------------- conditioner
class ToyClassConfig(ConditionerConfig):
    num_classes: int = 10
    modulate: bool = Field(True, description="also produce adaLN-single modulation")


class ToyClassConditioner(Conditioner):
    def __init__(self, config: ToyClassConfig, *, dim: int, num_layers: int) -> None:
        super().__init__()
        self.config = config
        self.num_classes, self.dim, self.num_layers = config.num_classes, dim, num_layers
        self.label_dropout = config.label_dropout
        self.embed = nn.Embedding(config.num_classes + 1, dim)
        self.mod = nn.Linear(dim, 3 * dim) if config.modulate else None
        self.final = nn.Linear(dim, 2 * dim) if config.modulate else None
        self.tables = nn.Parameter(torch.zeros(num_layers, 3, dim)) if config.modulate else None
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, labels: Tensor) -> Conditioning:
        c = self.embed(labels)
        if self.mod is None:
            return Conditioning(prefix=c[:, None])
        assert self.tables is not None and self.final is not None
        shared = self.mod(F.silu(c)).view(-1, 1, 3, self.dim)  # (B, 1, 3, D)
        layers = shared.transpose(0, 1) + self.tables[:, None]  # (L, B, 3, D)
        final = self.final(F.silu(c)).view(-1, 2, self.dim)
        return Conditioning(prefix=c[:, None], layers=layers, final=final)

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [cast(nn.Parameter, self.embed.weight)]


# --------------------------------------------------------------------------- backbone
class ToyGRUConfig(BackboneConfig):
    dim: int = Field(32, ge=1)
    layers: int = Field(2, ge=1)


@dataclass
class ToyGRUState:
    hidden: Tensor  # (layers, B, D)
    batch_size: int


def _modulate(x: Tensor, m: Modulation | None) -> Tensor:
    if m is None:
        return x
    return x * (1 + m.scale.unsqueeze(1)) + m.shift.unsqueeze(1)


class ToyGRUBackbone(Backbone[ToyGRUState]):
    def __init__(self, config: ToyGRUConfig) -> None:
        super().__init__()
        if config.vocab_size is None or config.num_tokens is None:
            raise ValueError("toy-gru needs vocab_size and num_tokens")
        self.config = config
        self.dim, self.num_layers = config.dim, config.layers
        self.vocab_size, self.num_tokens = config.vocab_size, config.num_tokens
        self.tok = nn.Embedding(config.vocab_size, config.dim)
        self.norms = nn.ModuleList(nn.LayerNorm(config.dim, elementwise_affine=False) for _ in range(config.layers))
        self.grus = nn.ModuleList(nn.GRU(config.dim, config.dim, batch_first=True) for _ in range(config.layers))
        self.norm_f = nn.LayerNorm(config.dim, elementwise_affine=False)
        self.head = nn.Linear(config.dim, config.vocab_size)

    def _run(self, x: Tensor, cond: Conditioning, hidden: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        out_h = []
        for i, (norm, gru) in enumerate(zip(self.norms, self.grus, strict=True)):
            m = cond.modulation(i)
            y, h = gru(_modulate(norm(x), m), None if hidden is None else hidden[i : i + 1].contiguous())
            x = x + (y if m is None or m.gate is None else m.gate.unsqueeze(1) * y)
            out_h.append(h[0])
        return self.head(_modulate(self.norm_f(x), cond.final_modulation())), out_h

    def forward(self, codes: Tensor, cond: Conditioning) -> Tensor:
        x = torch.cat([cond.prefix, self.tok(codes[:, :-1])], dim=1)
        logits, _ = self._run(x, cond, None)
        return logits[:, cond.prefix_len - 1 :]

    def init_state(self, batch_size, *, device=None, dtype=None) -> ToyGRUState:
        dtype = dtype or self.head.weight.dtype
        return ToyGRUState(torch.zeros(self.num_layers, batch_size, self.dim, device=device, dtype=dtype), batch_size)

    def prefill(self, state: ToyGRUState, cond: Conditioning) -> Tensor:
        state.hidden.zero_()
        logits, h = self._run(cond.prefix, cond, state.hidden)
        state.hidden.copy_(torch.stack(h))
        return logits[:, -1]

    def step(self, state: ToyGRUState, tokens: Tensor, cond: Conditioning) -> Tensor:
        logits, h = self._run(self.tok(tokens)[:, None], cond, state.hidden)
        state.hidden.copy_(torch.stack(h))
        return logits[:, -1]

    def select_state(self, state: ToyGRUState, index: Tensor) -> ToyGRUState:
        return ToyGRUState(state.hidden.index_select(1, index), int(index.numel()))

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [cast(nn.Parameter, self.tok.weight)]
