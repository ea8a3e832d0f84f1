"""Training batches from a code store: deterministic, sharded and resumable.

* :class:`CodeDataset`: random access to a complete store's items (codes as int64).
  Small stores are held in memory; larger ones are read chunk by chunk through zarr
  with a per-process cache.
* :class:`EpochSampler`: the order of an epoch is a function of ``(seed, epoch)`` only;
  ranks take interleaved slices of it; with augmented stores it also picks each item's
  view for the epoch.
* :class:`CodeLoader`: a ``torch.utils.data.DataLoader`` over the two that counts the
  batches it hands out, so ``state_dict()`` resumes mid-epoch exactly where training was.

Resume state is ``{"epoch", "position"}`` where ``position`` counts items of the epoch's
global order already consumed by all ranks together, so a run may even resume on a
different number of ranks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from avgkit.data.store import CodeStore
from avgkit.errors import AvgkitError

#: Stores whose codes take at most this many bytes are loaded into memory.
DEFAULT_MAX_MEMORY_BYTES = 8 << 30

Key = int | tuple[int, int]  # item position, or (item position, view)


class CodeBatch(NamedTuple):
    codes: Tensor  # (B, T) int64
    labels: Tensor  # (B,) int64


class CodeDataset(Dataset):
    """The encoded items of a complete code store.

    Item ``p`` (``0 <= p < len(self)``) is store index ``self.indices[p]``; images that
    could not be read are left out. ``self[p]`` gives ``(codes (T,) int64, label int64)``
    for the default view (the center crop for ten-crop stores), ``self[(p, v)]`` view
    ``v``. Picklable: DataLoader workers reopen the store themselves.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        in_memory: bool | None = None,
        max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
        cache_bytes: int = 256 << 20,
    ) -> None:
        self.path = Path(path)
        store = CodeStore.open(self.path)  # raises unless every item is extracted
        self.meta = store.meta
        self.num_views = store.num_views
        self.num_tokens = store.num_tokens
        self.vocab_size = store.vocab_size
        self.chunk_items = store.chunk_items
        self.labels = store.read_labels()  # (N,) int64 over store indices
        self.indices = np.flatnonzero(self.labels >= 0)
        if len(self.indices) == 0:
            raise AvgkitError(f"code store {self.path} holds no readable images; check the source and re-run prepare")
        self.in_memory = store.codes_nbytes() <= max_memory_bytes if in_memory is None else bool(in_memory)
        self.default_view = 4 if self.meta.augmentation == "tencrop" else 0
        self.cache_bytes = int(cache_bytes)
        self._codes = store.read_codes() if self.in_memory else None
        self._store: CodeStore | None = store if not self.in_memory else None
        self._done = np.ones(len(self.labels), dtype=bool)  # verified by CodeStore.open
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None  # zarr handles are reopened in the worker process
        state["_cache"] = OrderedDict()
        state["_cached_bytes"] = 0
        return state

    # ------------------------------------------------------------------ access
    def _split(self, key: Key) -> tuple[int, int]:
        p, v = (key, self.default_view) if isinstance(key, (int, np.integer)) else key
        if not (0 <= v < self.num_views):
            raise IndexError(f"view {v} out of range for a store with {self.num_views} view(s)")
        return int(self.indices[p]), int(v)

    def _blocks(self, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
        """Codes of each wanted (chunk, view): cache hits, then one zarr call per view."""
        blocks = {}
        for key in wanted:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                blocks[key] = hit
        misses = sorted(wanted - blocks.keys())
        if not misses:
            return blocks
        if self._store is None:
            self._store = CodeStore.open(self.path, verify=False)
        for v in sorted({v for _, v in misses}):
            chunks = [c for c, vv in misses if vv == v]
            read = self._store.read_chunks(chunks, v if self.num_views > 1 else None, done=self._done)
            blocks.update({(c, v): arr for c, arr in read.items()})
        # Cache after use (a batch may need more than the cache holds), newest reads
        # last; copies, so that an evicted block frees its memory.
        room = self.cache_bytes
        for key in reversed(misses):
            room -= blocks[key].nbytes
            if room < 0:
                break
            self._cache[key] = blocks[key].copy()
            self._cached_bytes += blocks[key].nbytes
        while self._cached_bytes > self.cache_bytes and self._cache:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.nbytes
        return blocks

    def _codes_of(self, store_idx: np.ndarray, views: np.ndarray) -> np.ndarray:
        if self._codes is not None:
            return self._codes[store_idx] if self.num_views == 1 else self._codes[store_idx, views]
        chunk_of = store_idx // self.chunk_items
        blocks = self._blocks(set(zip(chunk_of.tolist(), views.tolist(), strict=True)))
        out = np.empty((len(store_idx), self.num_tokens), dtype=np.int64)
        for k, (c, v, i) in enumerate(zip(chunk_of.tolist(), views.tolist(), store_idx.tolist(), strict=True)):
            out[k] = blocks[(c, v)][i - c * self.chunk_items]
        return out

    def get_batch(self, keys: Sequence[Key]) -> CodeBatch:
        """Codes ``(B, T)`` and labels ``(B,)``, both int64, for a list of keys."""
        pairs = [self._split(k) for k in keys]
        store_idx = np.fromiter((s for s, _ in pairs), dtype=np.int64, count=len(pairs))
        views = np.fromiter((v for _, v in pairs), dtype=np.int64, count=len(pairs))
        codes = torch.from_numpy(self._codes_of(store_idx, views).astype(np.int64, copy=False))
        return CodeBatch(codes, torch.from_numpy(self.labels[store_idx]))

    def __getitem__(self, key: Key) -> tuple[Tensor, Tensor]:
        codes, labels = self.get_batch([key])
        return codes[0], labels[0]

    def __getitems__(self, keys: list[Key]) -> list[tuple[Tensor, Tensor]]:
        """Batched fetch for a plain DataLoader: one read per chunk instead of per item."""
        codes, labels = self.get_batch(keys)
        return list(zip(codes, labels, strict=True))


# --------------------------------------------------------------------------- sampling
class EpochSampler(Sampler[Key]):
    """Deterministic, DDP-sharded, resumable order over ``num_items`` items.

    The epoch's global order is a permutation drawn from ``(seed, epoch)``; rank ``r``
    of ``world_size`` takes every ``world_size``-th item starting at ``position + r``.
    Without ``drop_last`` the tail is padded with the order's first items so that all
    ranks see equally many (the usual DDP convention); with it the tail is dropped.
    With ``num_views > 1`` it yields ``(item, view)``, the view drawn per item and epoch.
    """

    def __init__(
        self,
        num_items: int,
        *,
        num_views: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if rank is None or world_size is None:
            r, w = _dist_rank_world()
            rank = r if rank is None else rank
            world_size = w if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise AvgkitError(f"rank {rank} is outside world size {world_size}")
        if num_items <= 0:
            raise AvgkitError("cannot sample from an empty dataset")
        self.num_items, self.num_views = int(num_items), int(num_views)
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.position = 0

    # ------------------------------------------------------------------ order
    def order(self, epoch: int) -> np.ndarray:
        """The global item order of ``epoch`` (identical on every rank)."""
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch, 0]).permutation(self.num_items)

    def views(self, epoch: int) -> np.ndarray:
        """The view used for each item in ``epoch``."""
        if self.num_views == 1:
            return np.zeros(self.num_items, dtype=np.int64)
        return np.random.default_rng([self.seed, epoch, 1]).integers(0, self.num_views, self.num_items)

    def rank_items(self) -> np.ndarray:
        """This rank's remaining items of the current epoch, from ``position`` on."""
        rest = self.order(self.epoch)[min(self.position, self.num_items) :]
        extra = len(rest) % self.world_size
        if extra and self.drop_last:
            rest = rest[: len(rest) - extra]
        elif extra:
            pad = self.world_size - extra
            rest = np.concatenate([rest, np.resize(self.order(self.epoch), pad)])
        return rest[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Key]:
        items = self.rank_items()
        if self.num_views == 1:
            return iter(items.tolist())
        views = self.views(self.epoch)[items]
        return iter(zip(items.tolist(), views.tolist(), strict=True))

    def __len__(self) -> int:
        rest = max(0, self.num_items - self.position)
        return rest // self.world_size if self.drop_last else -(-rest // self.world_size)

    # ------------------------------------------------------------------ state
    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning."""
        self.epoch, self.position = int(epoch), 0

    def advance(self, n_per_rank: int) -> None:
        """Record that every rank consumed ``n_per_rank`` more items."""
        self.position += n_per_rank * self.world_size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_items": self.num_items}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "num_items"):
            if key in state and int(state[key]) != getattr(self, key):
                raise AvgkitError(
                    f"loader state was saved with {key}={state[key]} but this loader has {key}={getattr(self, key)}; "
                    f"resume with the run's original data and seed"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _BatchKeys(Sampler[list[Key]]):
    """Groups the epoch sampler's keys into batches (evaluated at each ``iter``)."""

    def __init__(self, sampler: EpochSampler, batch_size: int, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __iter__(self) -> Iterator[list[Key]]:
        keys = list(self.sampler)
        stop = len(keys) - len(keys) % self.batch_size if self.drop_last else len(keys)
        for i in range(0, stop, self.batch_size):
            yield keys[i : i + self.batch_size]

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class _Batched(Dataset):
    """``dataset[list of keys] -> CodeBatch`` so workers build whole batches."""

    def __init__(self, dataset: CodeDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, keys: list[Key]) -> CodeBatch:
        return self.dataset.get_batch(keys)

    def __len__(self) -> int:
        return len(self.dataset)


class CodeLoader:
    """Batches of :class:`CodeBatch` for one rank, resumable mid-epoch.

    Iterating gives the rest of the current epoch; running to the end moves to the next
    epoch. ``state_dict()`` counts only batches already handed out (never those that
    workers prefetched), so restoring it and iterating continues the exact sequence.
    """

    def __init__(
        self,
        dataset: CodeDataset,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
    ) -> None:
        if batch_size <= 0:
            raise AvgkitError(f"batch size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = EpochSampler(
            len(dataset),
            num_views=dataset.num_views,
            seed=seed,
            shuffle=shuffle,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
        )
        self._loader = DataLoader(
            _Batched(dataset),
            batch_size=None,
            sampler=_BatchKeys(self.sampler, batch_size, drop_last),
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers and num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
        )

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches left in the current epoch for this rank."""
        return len(self._loader.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[CodeBatch]:
        for batch in self._loader:
            self.sampler.advance(len(batch.labels))
            yield batch
        self.sampler.set_epoch(self.sampler.epoch + 1)

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


__all__ = ["CodeBatch", "CodeDataset", "CodeLoader", "EpochSampler"]
