"""Condition batches: what a conditioner is given, beyond a tensor of class ids.

A :class:`Conditions` batch is one of

* ``"tokens"``: token ids ``(B, T)`` int64 with a mask ``(B, T)`` bool (True: real
  token), from a conditioner's own tokenizer (:meth:`Conditioner.tokenize`);
* ``"embeddings"``: precomputed features ``(B, T, E)`` with a mask ``(B, T)``, such as a
  frozen text encoder's output extracted once into the code store;
* ``"class"``: class ids ``(B,)`` (the plain label tensor that class-conditional
  conditioners take is the same thing; :meth:`labels` turns one into the other).

``null`` ``(B,)`` bool marks rows that are the null condition: the conditioner gives
them its unconditional conditioning (classifier-free guidance, condition dropout).

A batch slices, concatenates and moves like a tensor of rows, so the sampler and the
training loop pass it where a label tensor went.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

Kind = Literal["class", "tokens", "embeddings"]
KINDS: tuple[str, ...] = ("class", "tokens", "embeddings")


@dataclass
class Conditions:
    kind: Kind
    values: Tensor
    mask: Tensor | None = None
    null: Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown condition kind {self.kind!r}; use one of {', '.join(KINDS)}")
        want = {"class": 1, "tokens": 2, "embeddings": 3}[self.kind]
        if self.values.dim() != want:
            raise ValueError(f"{self.kind} conditions need values with {want} dimensions, got {tuple(self.values.shape)}")
        if self.kind != "class":
            if self.mask is None:
                self.mask = torch.ones(self.values.shape[:2], dtype=torch.bool, device=self.values.device)
            if tuple(self.mask.shape) != tuple(self.values.shape[:2]):
                raise ValueError(f"condition mask {tuple(self.mask.shape)} does not match values "
                                 f"{tuple(self.values.shape)}; give one mask entry per token")
            self.mask = self.mask.bool()
        if self.null is None:
            self.null = torch.zeros(self.values.shape[0], dtype=torch.bool, device=self.values.device)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def classes(cls, ids: Tensor) -> Conditions:
        return cls("class", ids.long())

    @classmethod
    def tokens(cls, ids: Tensor, mask: Tensor | None = None) -> Conditions:
        return cls("tokens", ids.long(), mask)

    @classmethod
    def embeddings(cls, values: Tensor, mask: Tensor | None = None) -> Conditions:
        return cls("embeddings", values, mask)

    # ------------------------------------------------------------------ rows
    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def shape(self) -> torch.Size:
        """The rows' leading shape (``(B,)``), as a label tensor's."""
        return self.values.shape[:1]

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def _map(self, fn: Any) -> Conditions:
        return Conditions(self.kind, fn(self.values), None if self.mask is None else fn(self.mask), fn(self.null))

    def __getitem__(self, index: Any) -> Conditions:
        return self._map(lambda t: t[index])

    def index_select(self, dim: int, index: Tensor) -> Conditions:
        if dim != 0:
            raise ValueError("conditions select rows only (dim 0)")
        return self._map(lambda t: t.index_select(0, index.to(t.device)))

    def to(self, device: torch.device | str | None = None, **kwargs: Any) -> Conditions:
        return self._map(lambda t: t.to(device, non_blocking=kwargs.get("non_blocking", False)))

    def expand_last(self, rows: int) -> Conditions:
        """This batch with its last row repeated ``rows`` more times (fixed-width groups)."""
        return Conditions.cat([self, self[-1:].repeat(rows)])

    def repeat(self, n: int) -> Conditions:
        return self._map(lambda t: t.repeat(n, *([1] * (t.dim() - 1))))

    def repeat_interleave(self, n: int) -> Conditions:
        return self._map(lambda t: t.repeat_interleave(n, dim=0))

    def with_null(self, drop: Tensor) -> Conditions:
        """The same rows, with ``drop`` ``(B,)`` bool rows turned into the null condition."""
        assert self.null is not None
        return Conditions(self.kind, self.values, self.mask, self.null | drop.to(self.null.device))

    def labels(self, null_label: int) -> Tensor:
        """Class conditions as the label tensor of a class-conditional conditioner."""
        if self.kind != "class":
            raise TypeError(f"{self.kind} conditions are no class labels; pair them with a conditioner taking "
                            f"{self.kind}")
        assert self.null is not None
        return torch.where(self.null, torch.full_like(self.values, null_label), self.values)

    @staticmethod
    def cat(parts: Sequence[Conditions]) -> Conditions:
        """Rows of several batches; token sequences are right-padded to the longest."""
        kind = parts[0].kind
        if any(p.kind != kind for p in parts):
            raise ValueError("cannot concatenate conditions of different kinds")
        if kind == "class":
            return Conditions(kind, torch.cat([p.values for p in parts]), None, torch.cat([p.null for p in parts]))  # type: ignore[misc]
        length = max(p.values.shape[1] for p in parts)

        def pad(t: Tensor) -> Tensor:
            extra = length - t.shape[1]
            if extra == 0:
                return t
            return torch.cat([t, t.new_zeros(t.shape[0], extra, *t.shape[2:])], 1)

        return Conditions(kind, torch.cat([pad(p.values) for p in parts]),
                          torch.cat([pad(p.mask) for p in parts]),  # type: ignore[arg-type]
                          torch.cat([p.null for p in parts]))  # type: ignore[misc]


__all__ = ["KINDS", "Conditions"]
