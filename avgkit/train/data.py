"""Training data for the loop: a dataset of codes, a resumable loader, whole-step batches.

The loop consumes *steps*: one optimizer step takes ``batch_size`` items (the global
batch) from the epoch's order, split over ``world_size`` ranks and ``grad_accum``
micro-batches. Batches come from :class:`avgkit.data.loader.CodeLoader` whatever the
dataset is: a zarr :class:`~avgkit.data.loader.CodeDataset`, or :class:`TensorCodes`
(codes held in memory, for tests and small data).

An epoch holds ``len(dataset) // batch_size`` steps for any (world size, accumulation),
so a run on N processes sees exactly the items of a run on one, and the loader state
(``{"epoch", "position"}``, in global items) resumes on any number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avgkit.data.loader import CodeBatch, CodeLoader
from avgkit.errors import AvgkitError


class TensorCodes:
    """Codes ``(N, T)`` and labels ``(N,)`` in memory, shaped like a code store's dataset."""

    num_views = 1

    def __init__(self, codes: Tensor, labels: Tensor, *, num_classes: int | None = None) -> None:
        if codes.dim() != 2 or labels.dim() != 1 or codes.shape[0] != labels.shape[0]:
            raise AvgkitError(
                f"in-memory codes must be (N, T) with labels (N,), got {tuple(codes.shape)} and {tuple(labels.shape)}"
            )
        self.codes = codes.detach().to("cpu", torch.int64).contiguous()
        self.labels = labels.detach().to("cpu", torch.int64).contiguous()
        self.num_tokens = int(codes.shape[1])
        self._num_classes = num_classes

    @property
    def num_classes(self) -> int:
        if self._num_classes is not None:
            return self._num_classes
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def get_batch(self, keys: Sequence[Any]) -> CodeBatch:
        idx = torch.as_tensor(np.asarray([k if np.isscalar(k) else k[0] for k in keys], dtype=np.int64))
        return CodeBatch(self.codes[idx], self.labels[idx])


def per_rank_batch(batch_size: int, world_size: int, grad_accum: int) -> int:
    """Items per micro-batch on one rank; the global batch must split evenly."""
    parts = world_size * grad_accum
    if batch_size % parts:
        raise AvgkitError(
            f"train.batch_size {batch_size} does not split over {world_size} process(es) x grad_accum {grad_accum}; "
            f"make batch_size a multiple of {parts}"
        )
    return batch_size // parts


class StepBatches:
    """This rank's ``grad_accum`` micro-batches for each optimizer step.

    Wraps a :class:`CodeLoader` built with the per-rank micro-batch size and
    ``drop_last=True``; a step never mixes two epochs (the few items left at an epoch's
    end are skipped). ``state_dict()`` is the loader's: it counts handed-out items only.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        batch_size: int,
        grad_accum: int,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if len(dataset) < batch_size:
            raise AvgkitError(
                f"the data set holds {len(dataset)} items, fewer than train.batch_size {batch_size}; "
                f"lower train.batch_size or use more data"
            )
        self.grad_accum = grad_accum
        self.micro_batch = per_rank_batch(batch_size, world_size, grad_accum)
        self.loader = CodeLoader(
            dataset,
            self.micro_batch,
            seed=seed,
            shuffle=True,
            rank=rank,
            world_size=world_size,
            drop_last=True,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
        )
        self._it: Iterator[CodeBatch] | None = None

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    def steps_per_epoch(self) -> int:
        return len(self.loader.dataset) // (self.micro_batch * self.grad_accum * self.loader.sampler.world_size)

    def next_step(self) -> list[CodeBatch]:
        if len(self.loader) < self.grad_accum:  # not enough left in this epoch for a whole step
            self.loader.set_epoch(self.loader.epoch + 1)
            self._it = None
        if self._it is None:
            self._it = iter(self.loader)
        return [next(self._it) for _ in range(self.grad_accum)]

    def state_dict(self) -> dict[str, Any]:
        return dict(self.loader.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
        self._it = None
