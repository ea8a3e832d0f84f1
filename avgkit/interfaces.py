"""The four roles of avgkit and the values that pass between them.

A recipe names one component per role; the core builds them through the plugin
registry and never looks inside them beyond what is written here.

    image --Tokenizer.encode--> codes --Backbone(codes, Conditioning)--> logits
    logits --Sampler--> codes --Tokenizer.decode--> image

Shapes: ``B`` batch, ``N`` image tokens (``grid[0] * grid[1]``), ``D`` model width,
``V`` codebook size, ``P`` prefix length, ``L`` backbone layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, cast, runtime_checkable

import torch
from torch import Tensor, nn

from avgkit.hookspecs import API_VERSION  # the plugin API version (defined beside the hooks)


class Modulation(NamedTuple):
    """adaLN modulation for one block: ``x * (1 + scale) + shift``, output ``* gate``.

    Each tensor is ``(B, D)``; ``gate`` is ``None`` for the final norm.
    """

    shift: Tensor
    scale: Tensor
    gate: Tensor | None


@dataclass
class Conditioning:
    """Everything a backbone receives from a conditioner for one batch.

    * ``prefix``: ``(B, P, D)`` vectors occupying the first ``P`` sequence positions
      (AiM: ``P = 1``, the class embedding).
    * ``layers``: ``(L, B, 3, D)`` per-block (shift, scale, gate), or ``None`` when the
      conditioner modulates nothing (class token only). Stored stacked so that a
      batch can be sliced, concatenated and captured in a CUDA graph as one tensor.
    * ``final``: ``(B, 2, D)`` (shift, scale) for the final norm, or ``None``.

    Backbones read it through :meth:`modulation` and :meth:`final_modulation` only.
    """

    prefix: Tensor
    layers: Tensor | None = None
    final: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.prefix.shape[0]

    @property
    def prefix_len(self) -> int:
        return self.prefix.shape[1]

    def modulation(self, layer: int) -> Modulation | None:
        """The (shift, scale, gate) that block ``layer`` applies, or ``None``."""
        if self.layers is None:
            return None
        m = self.layers[layer]
        return Modulation(m[:, 0], m[:, 1], m[:, 2])

    def final_modulation(self) -> Modulation | None:
        if self.final is None:
            return None
        return Modulation(self.final[:, 0], self.final[:, 1], None)

    def select(self, index: Tensor) -> Conditioning:
        """Rows ``index`` of the batch."""
        return Conditioning(
            self.prefix.index_select(0, index),
            None if self.layers is None else self.layers.index_select(1, index),
            None if self.final is None else self.final.index_select(0, index),
        )

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Concatenate batches (the sampler puts conditioned and null rows together)."""
        first = parts[0]
        return Conditioning(
            torch.cat([p.prefix for p in parts], 0),
            None if first.layers is None else torch.cat([cast(Tensor, p.layers) for p in parts], 1),
            None if first.final is None else torch.cat([cast(Tensor, p.final) for p in parts], 0),
        )

    def to(self, *args: Any, **kwargs: Any) -> Conditioning:
        return Conditioning(
            self.prefix.to(*args, **kwargs),
            None if self.layers is None else self.layers.to(*args, **kwargs),
            None if self.final is None else self.final.to(*args, **kwargs),
        )

    def clone(self) -> Conditioning:
        return Conditioning(
            self.prefix.clone(),
            None if self.layers is None else self.layers.clone(),
            None if self.final is None else self.final.clone(),
        )

    def copy_(self, src: Conditioning) -> Conditioning:
        """Overwrite these tensors in place (fixed buffers of a captured CUDA graph)."""
        self.prefix.copy_(src.prefix)
        if self.layers is not None:
            assert src.layers is not None
            self.layers.copy_(src.layers)
        if self.final is not None:
            assert src.final is not None
            self.final.copy_(src.final)
        return self


class Tokenizer(nn.Module):
    """Images to discrete codes and back.

    Images are float tensors ``(B, C, H, W)`` in ``[-1, 1]``; codes are ``(B, N)``
    int64 in raster order over ``grid``.
    """

    codebook_size: int
    grid: tuple[int, int]
    image_size: int
    channels: int = 3

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def encode(self, images: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class Conditioner(nn.Module):
    """Turns labels into a :class:`Conditioning`; owns the null condition for CFG.

    Built with the backbone's ``dim`` and ``num_layers``. Labels are ``(B,)`` int64
    in ``[0, num_classes)``; the null label is ``num_classes``.
    """

    num_classes: int
    dim: int
    num_layers: int
    prefix_len: int = 1
    #: probability of replacing a label by the null label in training (CFG dropout)
    label_dropout: float = 0.0

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: Tensor) -> Conditioning:  # pragma: no cover - interface
        raise NotImplementedError

    def drop_labels(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Training-time label dropout: each label becomes null with ``label_dropout``.

        Called explicitly by the trainer (never implied by ``forward``), so that an
        eval-mode forward pass is deterministic.
        """
        if self.label_dropout <= 0:
            return labels
        u = torch.rand(labels.shape, generator=generator, device=generator.device if generator else labels.device)
        drop = u.to(labels.device) < self.label_dropout
        return torch.where(drop, torch.full_like(labels, self.null_label), labels)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Class tables, excluded from "non-embedding" parameter counts."""
        return []

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        """The unconditional conditioning used for classifier-free guidance."""
        labels = torch.full((batch_size,), self.null_label, dtype=torch.long, device=device)
        return self(labels)


@runtime_checkable
class DecodeState(Protocol):
    """Opaque per-batch generation state (recurrent state, KV cache, ...).

    Allocated up front at its final size so that a decoding step can be captured in a
    CUDA graph. Only the backbone that created it looks inside.
    """

    batch_size: int


StateT = TypeVar("StateT", bound=DecodeState)


class Backbone(nn.Module, Generic[StateT]):
    """Sequence model over ``[prefix, image tokens]`` that predicts every image token.

    Training: ``forward(codes, cond)`` -> logits ``(B, N, V)`` where ``logits[:, k]``
    predicts ``codes[:, k]`` from the prefix and ``codes[:, :k]`` (teacher forcing).

    Generation, with state mutated in place::

        state = backbone.init_state(B, device=..., dtype=...)
        logits = backbone.prefill(state, cond)          # predicts token 0
        for k in range(N - 1):
            logits = backbone.step(state, token_k, cond)  # predicts token k + 1
    """

    dim: int
    num_layers: int
    vocab_size: int
    num_tokens: int

    def forward(self, codes: Tensor, cond: Conditioning) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def init_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> StateT:  # pragma: no cover - interface
        raise NotImplementedError

    def prefill(self, state: StateT, cond: Conditioning) -> Tensor:  # pragma: no cover
        """Reset ``state`` and run the prefix; returns the logits of image token 0 (B, V)."""
        raise NotImplementedError

    def step(self, state: StateT, tokens: Tensor, cond: Conditioning) -> Tensor:  # pragma: no cover
        """Feed one token per row (B,); returns the logits of the next token (B, V).

        Must not synchronise with the host (no ``.item()``, no data-dependent Python
        branches) so that the sampler can capture it in a CUDA graph.
        """
        raise NotImplementedError

    def select_state(self, state: StateT, index: Tensor) -> StateT:  # pragma: no cover
        """A new state holding rows ``index`` of ``state`` (beam/row pruning)."""
        raise NotImplementedError

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Token/position tables, excluded from "non-embedding" parameter counts."""
        return []


class Sampler(Protocol):
    """Drives a backbone from a condition to a full code grid."""

    def sample(
        self,
        backbone: Backbone,
        conditioner: Conditioner,
        labels: Tensor,
        *,
        seed: int = 0,
        index: Tensor | None = None,
    ) -> Tensor:
        """Codes ``(B, N)``; row ``r`` depends only on (seed, ``index[r]``, ``labels[r]``)."""
        ...


__all__ = [
    "API_VERSION",
    "Backbone",
    "Conditioner",
    "Conditioning",
    "DecodeState",
    "Modulation",
    "Sampler",
    "Tokenizer",
]
