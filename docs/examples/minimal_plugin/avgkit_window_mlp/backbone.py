"""``window-mlp``: each layer mixes a fixed window of the previous positions with an MLP.

A causal convolution in MLP form: position ``t`` of layer ``i`` sees that layer's
inputs at ``t - window + 1 .. t`` (zeros before the start). Decoding keeps, per
layer, the last ``window`` inputs in a buffer allocated once, so a step only shifts
that buffer in place.

Conditioning, as every avgkit backbone honours it:

* the conditioner's prefix vectors are the first sequence positions;
* block ``i`` normalises its input, applies ``cond.modulation(i)`` as
  ``x * (1 + scale) + shift`` and multiplies its output by ``gate``;
* the head applies ``cond.final_modulation()`` after the final norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from avgkit.interfaces import Backbone, Conditioning, Modulation
from avgkit.registry import BackboneConfig


class WindowMLPConfig(BackboneConfig):
    """Options; ``vocab_size`` and ``num_tokens`` come from the tokenizer."""

    dim: int = Field(32, ge=1, description="model width")
    layers: int = Field(2, ge=1, description="number of window layers")
    window: int = Field(4, ge=1, description="positions each layer sees (itself included)")
    hidden: int | None = Field(None, ge=1, description="MLP width; unset = 2 * dim")


@dataclass
class WindowState:
    """Per layer, the last ``window`` layer inputs, oldest first: ``(layers, B, window, dim)``."""

    windows: Tensor
    batch_size: int


def _modulate(x: Tensor, m: Modulation | None) -> Tensor:
    if m is None:
        return x
    shift, scale = (m.shift, m.scale) if x.dim() == 2 else (m.shift[:, None], m.scale[:, None])
    return x * (1 + scale) + shift


def _gated(y: Tensor, m: Modulation | None) -> Tensor:
    if m is None or m.gate is None:
        return y
    return y * (m.gate if y.dim() == 2 else m.gate[:, None])


class WindowLayer(nn.Module):
    def __init__(self, dim: int, window: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.mix = nn.Linear(window * dim, hidden)
        self.out = nn.Linear(hidden, dim)

    def mlp(self, windows: Tensor) -> Tensor:
        """``(..., window, dim)`` -> ``(..., dim)``."""
        return self.out(F.gelu(self.mix(windows.flatten(-2))))


class WindowMLP(Backbone):
    def __init__(self, config: WindowMLPConfig) -> None:
        super().__init__()
        if config.vocab_size is None or config.num_tokens is None:
            raise ValueError("window-mlp needs vocab_size and num_tokens; build it from a recipe or pass them")
        self.config = config
        self.dim, self.num_layers = config.dim, config.layers
        self.vocab_size, self.num_tokens = config.vocab_size, config.num_tokens
        self.window = config.window
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        hidden = config.hidden or 2 * config.dim
        self.blocks = nn.ModuleList(WindowLayer(config.dim, config.window, hidden) for _ in range(config.layers))
        self.norm_f = nn.LayerNorm(config.dim, elementwise_affine=False)
        self.head = nn.Linear(config.dim, config.vocab_size)

    def _logits(self, x: Tensor, cond: Conditioning) -> Tensor:
        return self.head(_modulate(self.norm_f(x), cond.final_modulation()))

    # training: the whole sequence at once
    def forward(self, codes: Tensor, cond: Conditioning) -> Tensor:
        x = torch.cat([cond.prefix, self.embed(codes[:, :-1])], dim=1)  # (B, P + N - 1, D)
        for i, block in enumerate(self.blocks):
            m = cond.modulation(i)
            u = F.pad(_modulate(block.norm(x), m), (0, 0, self.window - 1, 0))
            windows = u.unfold(1, self.window, 1).transpose(-1, -2)  # (B, T, window, D)
            x = x + _gated(block.mlp(windows), m)
        return self._logits(x[:, cond.prefix_len - 1 :], cond)

    # generation: one position at a time through the state
    def init_state(self, batch_size, *, device=None, dtype=None) -> WindowState:
        ref = self.head.weight
        shape = (self.num_layers, batch_size, self.window, self.dim)
        windows = torch.zeros(shape, device=device if device is not None else ref.device, dtype=dtype or ref.dtype)
        return WindowState(windows, batch_size)

    def _advance(self, state: WindowState, x: Tensor, cond: Conditioning) -> Tensor:
        for i, block in enumerate(self.blocks):
            m = cond.modulation(i)
            buf = state.windows[i]  # a view: writing into it updates the state in place
            buf.copy_(torch.cat([buf[:, 1:], _modulate(block.norm(x), m)[:, None]], dim=1))
            x = x + _gated(block.mlp(buf), m)
        return self._logits(x, cond)

    def prefill(self, state: WindowState, cond: Conditioning) -> Tensor:
        state.windows.zero_()
        for p in range(cond.prefix_len):
            logits = self._advance(state, cond.prefix[:, p].to(state.windows.dtype), cond)
        return logits

    def step(self, state: WindowState, tokens: Tensor, cond: Conditioning) -> Tensor:
        return self._advance(state, self.embed(tokens).to(state.windows.dtype), cond)

    def select_state(self, state: WindowState, index: Tensor) -> WindowState:
        return WindowState(state.windows.index_select(1, index), int(index.numel()))

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.embed.weight]
