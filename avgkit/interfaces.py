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
from avgkit.sizes import image_hw


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
      (AiM: ``P = 1``, the class embedding; a caption: one vector per text token).
    * ``layers``: ``(L, B, 3, D)`` per-block (shift, scale, gate), or ``None`` when the
      conditioner modulates nothing (class token only). Stored stacked so that a
      batch can be sliced, concatenated and captured in a CUDA graph as one tensor.
    * ``final``: ``(B, 2, D)`` (shift, scale) for the final norm, or ``None``.
    * ``prefix_mask``: ``(B, P)`` bool, True where a prefix vector is real and False
      where it is padding, or ``None`` when every vector is real. A backbone that sets
      ``accepts_prefix_mask`` gives the same logits whatever the amount of padding and
      wherever it sits; every row keeps at least one real vector.

    Backbones read it through :meth:`modulation` and :meth:`final_modulation` only.
    """

    prefix: Tensor
    layers: Tensor | None = None
    final: Tensor | None = None
    prefix_mask: Tensor | None = None

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
            None if self.prefix_mask is None else self.prefix_mask.index_select(0, index),
        )

    def mask(self) -> Tensor:
        """``prefix_mask``, or all True when there is none."""
        if self.prefix_mask is not None:
            return self.prefix_mask
        return torch.ones(self.prefix.shape[:2], dtype=torch.bool, device=self.prefix.device)

    def padded_to(self, length: int) -> Conditioning:
        """The same conditioning with its prefix left-padded (zeros, mask False) to ``length``."""
        p = self.prefix_len
        if length == p:
            return self
        if length < p:
            raise ValueError(f"cannot pad a prefix of {p} vectors to {length}")
        b = self.batch_size
        pad = self.prefix.new_zeros(b, length - p, self.prefix.shape[2])
        mask = torch.cat([torch.zeros(b, length - p, dtype=torch.bool, device=self.prefix.device), self.mask()], 1)
        return Conditioning(torch.cat([pad, self.prefix], 1), self.layers, self.final, mask)

    def left_aligned(self) -> Conditioning:
        """Padding moved before the real vectors of each row (their order kept).

        A recurrent backbone then starts every row with its padding, where the state
        is still zero, and ends the prefix on real vectors.
        """
        if self.prefix_mask is None:
            return self
        order = torch.sort(self.prefix_mask.to(torch.int8), dim=1, stable=True).indices
        prefix = self.prefix.gather(1, order[..., None].expand_as(self.prefix))
        return Conditioning(prefix, self.layers, self.final, self.prefix_mask.gather(1, order))

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Concatenate batches (the sampler puts conditioned and null rows together).

        Prefixes of different lengths are left-padded to the longest (with a mask).
        """
        first = parts[0]
        length = max(p.prefix_len for p in parts)
        if any(p.prefix_mask is not None or p.prefix_len != length for p in parts):
            parts = [p.padded_to(length) for p in parts]
            mask: Tensor | None = torch.cat([p.mask() for p in parts], 0)
        else:
            mask = None
        return Conditioning(
            torch.cat([p.prefix for p in parts], 0),
            None if first.layers is None else torch.cat([cast(Tensor, p.layers) for p in parts], 1),
            None if first.final is None else torch.cat([cast(Tensor, p.final) for p in parts], 0),
            mask,
        )

    def to(self, *args: Any, **kwargs: Any) -> Conditioning:
        mask = self.prefix_mask
        if mask is not None:  # a dtype argument must not turn the mask into floats
            device = kwargs.get("device") or next((a for a in args if isinstance(a, (str, torch.device))), None)
            mask = mask.to(device) if device is not None else mask
        return Conditioning(
            self.prefix.to(*args, **kwargs),
            None if self.layers is None else self.layers.to(*args, **kwargs),
            None if self.final is None else self.final.to(*args, **kwargs),
            mask,
        )

    def clone(self) -> Conditioning:
        return Conditioning(
            self.prefix.clone(),
            None if self.layers is None else self.layers.clone(),
            None if self.final is None else self.final.clone(),
            None if self.prefix_mask is None else self.prefix_mask.clone(),
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
        if self.prefix_mask is not None:
            self.prefix_mask.copy_(src.mask())
        return self


class Tokenizer(nn.Module):
    """Images to discrete codes and back.

    Images are float tensors ``(B, C, H, W)`` in ``[-1, 1]``; codes are ``(B, N)``
    int64 in raster order over ``grid`` ``(h, w)``: ``h`` rows of ``w`` tokens.
    ``image_size`` is an int for a square image or ``(H, W)`` (see
    :mod:`avgkit.sizes`); :attr:`image_hw` gives ``(H, W)`` either way.
    """

    codebook_size: int
    grid: tuple[int, int]
    image_size: int | tuple[int, int]
    channels: int = 3

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(H, W)`` of the images ``encode`` takes and ``decode`` returns."""
        return image_hw(self.image_size)

    def encode(self, images: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class Conditioner(nn.Module):
    """Turns a condition batch into a :class:`Conditioning`; owns the null condition for CFG.

    Built with the backbone's ``dim`` and ``num_layers``. A class-conditional
    conditioner takes labels ``(B,)`` int64 in ``[0, num_classes)``, the null label
    being ``num_classes``. A conditioner that also (or only) takes the other kinds of
    :class:`avgkit.conditions.Conditions` (token ids with a mask, precomputed
    embeddings with a mask) lists them in ``condition_kinds``, and handles rows whose
    ``null`` flag is set as the null condition.
    """

    num_classes: int
    dim: int
    num_layers: int
    prefix_len: int = 1
    #: probability of replacing a condition by the null condition in training (CFG dropout)
    label_dropout: float = 0.0
    #: the kinds of condition batch ``forward`` takes: "class" is a ``(B,)`` label tensor,
    #: "tokens" and "embeddings" are :class:`avgkit.conditions.Conditions`
    condition_kinds: tuple[str, ...] = ("class",)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: Tensor) -> Conditioning:  # pragma: no cover - interface
        raise NotImplementedError

    def drop_mask(self, batch_size: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
        """``(B,)`` bool: which rows training turns into the null condition (``label_dropout``)."""
        if self.label_dropout <= 0:
            return torch.zeros(batch_size, dtype=torch.bool, device=device)
        u = torch.rand((batch_size,), generator=generator, device=generator.device if generator else device)
        return u.to(device) < self.label_dropout

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

    def drop_conditions(self, batch: Any, generator: torch.Generator | None = None) -> Any:
        """Condition dropout for any batch: labels go to the null label, other kinds get ``null`` rows."""
        if isinstance(batch, Tensor):
            return self.drop_labels(batch, generator)
        return batch.with_null(self.drop_mask(len(batch), generator, batch.device))

    def tokenize(self, texts: Sequence[str]) -> Any:
        """Captions -> :class:`avgkit.conditions.Conditions` of token ids (text conditioners only)."""
        raise TypeError(f"conditioner {type(self).__name__} takes {', '.join(self.condition_kinds)} conditions, "
                        f"not text; pair the recipe with a text conditioner (conditioner: text)")

    def frozen_encoder(self, recorded: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Identity of a frozen text encoder whose features this conditioner takes as "embeddings".

        ``None`` (the default): the conditioner has none, and trains on its own token ids.
        A conditioner with one returns a JSON-able dict (its ``path`` and ``files`` entries
        are recorded, the others compared: features of another encoder are refused).
        ``recorded``: the identity a code store holds, so unchanged files need no new hash.
        Its features (:meth:`features`) are then extracted once into the code store
        (:mod:`avgkit.data.features`) and training never runs the encoder.
        """
        return None

    def features(self, ids: Tensor, mask: Tensor) -> Tensor:
        """The frozen encoder's features ``(B, T, E)`` of token ids from :meth:`tokenize`, zero at padding."""
        raise TypeError(f"conditioner {type(self).__name__} has no frozen encoder to extract features from")

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
    #: whether the backbone honours ``Conditioning.prefix_mask`` (padded, variable-length prefixes)
    accepts_prefix_mask: bool = False

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

    def decode_settings(self, autocast: torch.dtype | None = None) -> dict[str, Any]:
        """What decides a decoded image besides the weights and the sampler's options, when decoding under
        ``autocast`` (``None``: none), as JSON values: e.g. the dtype a decoding state resolves to. A sampling job
        records it, so that a resumed job never decodes its remaining images otherwise. Default: nothing."""
        return {}

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Token/position tables, excluded from "non-embedding" parameter counts."""
        return []


class Sampler(Protocol):
    """Drives a backbone from a condition to a full code grid."""

    def sample(
        self,
        backbone: Backbone,
        conditioner: Conditioner,
        labels: Any,
        *,
        seed: int = 0,
        index: Tensor | None = None,
    ) -> Tensor:
        """Codes ``(B, N)``; row ``r`` depends only on (seed, ``index[r]``, ``labels[r]``).

        ``labels`` is a class-id tensor or an :class:`avgkit.conditions.Conditions` batch.
        """
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
