"""Encode a source's images once into a code store, resumably.

Work proceeds chunk by chunk in index order. A chunk's codes and labels are written
(and fsynced) before its ``done`` flag, so killing the process at any instant and
running :func:`prepare` again finishes the store with no item missing or written twice:
the rerun recomputes exactly the chunks whose ``done`` flag is not set.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from avgkit.data.sources import Augmentation, ImageSource, SkippedImage, UnreadableImageError, get_augmentation
from avgkit.data.store import SKIPPED_LABEL, CodeStore, StoreError, StoreMeta
from avgkit.errors import AvgkitError
from avgkit.interfaces import Tokenizer
from avgkit.runtime.stop import Interrupted, StopSignals, signal_name
from avgkit.sizes import canonical_size, same_size


@dataclass
class PrepareReport:
    """What one :func:`prepare` call did."""

    store: str
    total: int  # items in the source
    encoded: int  # items encoded by this call
    resumed: int  # items already done before this call
    skipped: list[SkippedImage] = field(default_factory=list)  # unreadable images, all runs
    seconds: float = 0.0
    images_encoded: int = 0  # tokenizer inputs (items x views) this call

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "total": self.total,
            "encoded": self.encoded,
            "resumed": self.resumed,
            "skipped": [s.to_dict() for s in self.skipped],
            "seconds": round(self.seconds, 3),
            "images_encoded": self.images_encoded,
        }

    def __str__(self) -> str:
        rate = self.images_encoded / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{self.store}: {self.total} items, {self.encoded} encoded now, {self.resumed} already done, "
            f"{self.num_skipped} skipped ({self.seconds:.1f} s, {rate:.0f} images/s)"
        ]
        lines += [f"  skipped {s.path}: {s.reason}" for s in self.skipped[:20]]
        if self.num_skipped > 20:
            lines.append(f"  ... and {self.num_skipped - 20} more (see the store's metadata)")
        return "\n".join(lines)


class _ExtractionItems(Dataset):
    """Pending items as (index, views (A, C, H, W) or None, label, error) for a DataLoader."""

    def __init__(self, source: ImageSource, augmentation: Augmentation, image_size: int | tuple[int, int],
                 indices: np.ndarray) -> None:
        self.source = source
        self.augmentation = augmentation
        self.image_size = image_size
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, int, str | None]:
        index = int(self.indices[i])
        try:
            image, label = self.source[index]
        except UnreadableImageError as e:
            return index, None, SKIPPED_LABEL, e.reason
        return index, self.augmentation(image, self.image_size), int(label), None


def _collate(batch: list[Any]) -> list[Any]:
    return batch


class _Progress:
    """tqdm on a terminal, a plain line every ``interval`` seconds otherwise."""

    def __init__(self, total: int, initial: int, enabled: bool, stream: TextIO | None = None, interval: float = 30.0):
        self.total, self.n, self.start_n = total, initial, initial
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interval = interval
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm.auto import tqdm
            except ImportError:  # optional: plain lines work everywhere
                return
            self.bar = tqdm(total=total, initial=initial, unit="img", desc="prepare", file=self.stream)

    def update(self, n: int) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and (now - self.last >= self.interval or self.n >= self.total):
            self.last = now
            rate = (self.n - self.start_n) / max(now - self.t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            print(
                f"prepare: {self.n}/{self.total} items ({100 * self.n / self.total:.1f}%), "
                f"{rate:.1f} items/s, eta {eta:.0f} s",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _open_or_create(path: Path, meta: StoreMeta, n_items: int, chunk_items: int | None) -> CodeStore:
    if not path.exists():
        return CodeStore.create(path, meta, n_items, chunk_items=chunk_items)
    store = CodeStore.open(path, mode="r+", verify=False)
    have, want = store.meta.identity(), meta.identity()
    diff = [k for k in want if have.get(k) != want[k]]
    if len(store) != n_items:
        diff.insert(0, "number of items")
    if diff:
        k = diff[0]
        shown = (len(store), n_items) if k == "number of items" else (have.get(k), want[k])
        raise StoreError(
            f"code store {path} was made with different settings ({k}: {shown[0]!r} there, {shown[1]!r} now); "
            f"use a new store path or delete {path}"
        )
    return store


def check_channels(source: Any, tokenizer: Any) -> None:
    """Refuse images whose channel count the tokenizer does not take, naming the option."""
    if source.channels != tokenizer.channels:
        raise AvgkitError(
            f"source images have {source.channels} channel(s) but the tokenizer expects {tokenizer.channels}; "
            f"set tokenizer.channels={source.channels} or pick a tokenizer for this data"
        )


def prepare(
    source: ImageSource,
    tokenizer: Tokenizer,
    store_path: str | Path,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    augment: str = "none",
    progress: bool = True,
    num_workers: int = 0,
    tokenizer_name: str | None = None,
    preset: str | None = None,
    weights: str = "unknown",
    chunk_items: int | None = None,
    durable: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> PrepareReport:
    """Encode every image of ``source`` with ``tokenizer`` into the store at ``store_path``.

    Creates the store, or resumes it when it exists with the same settings. Images are
    loaded at the size the augmentation needs (``source.at_size``), split into views,
    and encoded ``batch_size`` tokenizer inputs at a time on ``device``; ``num_workers``
    processes decode images in parallel. ``tokenizer_name``/``preset``/``weights``
    (see :func:`avgkit.data.store.weights_id`) are recorded so that training can check
    it uses the same tokenizer. ``on_chunk(chunk)`` runs after each chunk is committed.
    """
    t0 = time.monotonic()
    aug = get_augmentation(augment)
    size = canonical_size(tokenizer.image_size)
    check_channels(source, tokenizer)
    load_size = aug.load_size(size)
    if not same_size(source.image_size, load_size):
        source = source.at_size(load_size)
    meta = StoreMeta(
        tokenizer=tokenizer_name or getattr(tokenizer, "name", None) or type(tokenizer).__name__,
        preset=preset,
        weights=weights,
        vocab_size=int(tokenizer.codebook_size),
        grid=(int(tokenizer.grid[0]), int(tokenizer.grid[1])),
        resolution=size,
        channels=int(tokenizer.channels),
        augmentation=aug.name,
        num_views=aug.num_views,
        class_names=list(source.class_names),
        source=source.describe(),
    )
    path = Path(store_path)
    store = _open_or_create(path, meta, len(source), chunk_items)
    with store.writer_lock():
        store.cleanup_partial_files()
        pending_chunks = store.missing_chunks()
        pending = [np.arange(*store.chunk_bounds(c)) for c in pending_chunks]
        indices = np.concatenate(pending) if pending else np.zeros(0, dtype=np.int64)
        resumed = len(store) - len(indices)
        skipped: dict[int, SkippedImage] = {}
        n_images = 0
        if len(indices):
            bar = _Progress(len(store), resumed, progress)
            stop = StopSignals("finishing the chunk being encoded, then stopping")
            user_on_chunk = on_chunk

            def on_chunk(chunk: int) -> None:  # noqa: F811 - the caller's callback, then the stop check
                if user_on_chunk is not None:
                    user_on_chunk(chunk)
                if stop.requested:
                    done = int(store.done_mask().sum())
                    raise Interrupted(
                        f"stopped by {signal_name(stop.signum or 0)} with {done} of {len(store)} images encoded into "
                        f"{path}; run the same command again to continue", stop.signum or 0)

            try:
                stop.__enter__()
                n_images = _encode_chunks(
                    store,
                    source,
                    tokenizer,
                    aug,
                    size,
                    indices,
                    pending_chunks,
                    skipped,
                    batch_size=batch_size,
                    device=torch.device(device),
                    num_workers=num_workers,
                    durable=durable,
                    on_chunk=on_chunk,
                    bar=bar,
                )
            finally:
                stop.__exit__(None, None, None)
                bar.close()
        labels = store.read_labels()
        for i in np.flatnonzero(labels == SKIPPED_LABEL):  # unreadable in an earlier run
            skipped.setdefault(
                int(i), SkippedImage(int(i), source.item_path(int(i)), "unreadable (found by an earlier run)")
            )
        report_skipped = [skipped[i] for i in sorted(skipped)]
        store.finalize(s.to_dict() for s in report_skipped)
    return PrepareReport(
        store=str(path),
        total=len(store),
        encoded=len(indices),
        resumed=resumed,
        skipped=report_skipped,
        seconds=time.monotonic() - t0,
        images_encoded=n_images,
    )


def _encode_chunks(
    store: CodeStore,
    source: ImageSource,
    tokenizer: Tokenizer,
    aug: Augmentation,
    size: int | tuple[int, int],
    indices: np.ndarray,
    chunks: Sequence[int],
    skipped: dict[int, SkippedImage],
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int,
    durable: bool,
    on_chunk: Callable[[int], None] | None,
    bar: _Progress,
) -> int:
    """Encode ``indices`` (whole chunks, ascending) and commit each chunk as it fills."""
    a, t = aug.num_views, store.num_tokens
    items_per_batch = max(1, batch_size // a)
    loader = DataLoader(
        _ExtractionItems(source, aug, size, indices),
        batch_size=items_per_batch,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    tokenizer.eval().to(device)
    queue = list(chunks)
    chunk = queue.pop(0)
    start, stop = store.chunk_bounds(chunk)
    codes = np.zeros((stop - start, a, t), dtype=np.int64)
    labels = np.full(stop - start, SKIPPED_LABEL, dtype=np.int64)
    n_images = 0
    for batch in loader:
        good = [(i, v, y) for i, v, y, err in batch if err is None]
        for i, _, _, err in batch:
            if err is not None:
                skipped[i] = SkippedImage(i, source.item_path(i), err)
        batch_codes: dict[int, np.ndarray] = {}
        if good:
            x = torch.cat([v for _, v, _ in good]).to(device, non_blocking=True)
            with torch.inference_mode():
                out = tokenizer.encode(x)
            if tuple(out.shape) != (len(good) * a, t):
                raise AvgkitError(
                    f"tokenizer returned codes of shape {tuple(out.shape)} for {len(good) * a} images; "
                    f"expected ({len(good) * a}, {t}) from its grid {tuple(tokenizer.grid)}"
                )
            out_np = out.reshape(len(good), a, t).cpu().numpy()
            batch_codes = {i: out_np[k] for k, (i, _, _) in enumerate(good)}
            n_images += len(good) * a
        labels_of = {i: y for i, _, y in good}
        for i, *_ in batch:  # items arrive in ascending order, whole chunks at a time
            if not start <= i < stop:  # pragma: no cover - a DataLoader never reorders
                raise RuntimeError(f"item {i} arrived outside its chunk {chunk}")
            if i in batch_codes:
                codes[i - start] = batch_codes[i]
                labels[i - start] = labels_of[i]
            if i == stop - 1:
                store.write_chunk(chunk, codes[:, 0] if a == 1 else codes, labels, durable=durable)
                bar.update(stop - start)
                if on_chunk is not None:
                    on_chunk(chunk)
                if queue:
                    chunk = queue.pop(0)
                    start, stop = store.chunk_bounds(chunk)
                    codes = np.zeros((stop - start, a, t), dtype=np.int64)
                    labels = np.full(stop - start, SKIPPED_LABEL, dtype=np.int64)
    return n_images


__all__ = ["PrepareReport", "prepare"]
