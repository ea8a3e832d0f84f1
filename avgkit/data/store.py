"""The code store: a zarr v3 group holding every image's tokenizer codes.

Layout of ``<path>`` (a local directory)::

    codes   (N, T) or (N, A, T)  smallest unsigned int for the vocabulary (uint16 for 16384)
    labels  (N,)                 class id; -1 marks an image that could not be read
    done    (N,)  bool           True once the item's codes and label are written
    attrs["avgkit"]              StoreMeta: tokenizer, weights hash, grid, augmentation, ...
    text_features/               optional: a frozen text encoder's features of each caption
                                 (avgkit.data.features), added after the codes

All three arrays are chunked along N with the same ``chunk_items`` (``codes`` also one
view per chunk, so reading view ``a`` of an item touches only that view's bytes).
Extraction writes a whole chunk at a time, codes and labels first and the ``done``
chunk last, each file written atomically (temporary file + rename) and fsynced before
``done`` flips, so a crash at any point leaves every item either fully written and
marked done, or not done. zarr returns zeros for chunks that were never written, so
every read here checks ``done`` and the chunk files first and raises instead.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from avgkit.errors import AvgkitError
from avgkit.io import fsync_path, sha256_file
from avgkit.sizes import canonical_size, image_hw, size_text

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams

#: Bumped when the on-disk layout changes incompatibly.
FORMAT_VERSION = 1
#: Label stored for an item whose image could not be read (it has no codes).
SKIPPED_LABEL = -1
_ATTR_KEY = "avgkit"
_CHUNK_TARGET_BYTES = 128 * 1024  # per chunk file: small enough for cheap random reads


class StoreError(AvgkitError):
    """Base of the code store's user errors."""


class IncompatibleStoreError(StoreError):
    """The store's codes do not fit what the recipe expects."""


class IncompleteStoreError(StoreError):
    """Some items have not been extracted yet."""


class MissingChunkError(StoreError):
    """A read touched a chunk that was never (completely) written."""


# --------------------------------------------------------------------------- metadata
@dataclass
class StoreMeta:
    """Everything needed to know where a store's codes came from.

    ``weights`` is ``"sha256:<hex>"`` of the tokenizer's weights file (see
    :func:`weights_id`) or ``"random:<seed>"`` for untrained weights.
    """

    tokenizer: str
    vocab_size: int
    grid: tuple[int, int]
    #: image size: ``S`` (square) or ``(H, W)`` (stored as ``[H, W]``), see :mod:`avgkit.sizes`
    resolution: int | tuple[int, int]
    class_names: list[str]
    source: dict[str, Any]
    preset: str | None = None
    weights: str = "unknown"
    channels: int = 3
    augmentation: str = "none"
    num_views: int = 1
    format_version: int = FORMAT_VERSION
    #: filled in when extraction finishes
    complete: bool = False
    class_counts: list[int] | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    #: ``"sha256:<hex>"`` of the codes and labels, computed once when extraction finishes
    fingerprint: str | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.grid[0] * self.grid[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __post_init__(self) -> None:
        self.resolution = canonical_size(self.resolution)  # a square is its side, as stores always held it

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        if not isinstance(self.resolution, int):
            d["resolution"] = list(self.resolution)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreMeta:
        known = {f for f in cls.__dataclass_fields__}
        d = {k: v for k, v in d.items() if k in known}
        d["grid"] = tuple(d["grid"])
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        """The fields that decide which codes go in; a resumed run must match them."""
        d = self.to_dict()
        for k in ("complete", "class_counts", "skipped", "fingerprint"):
            d.pop(k)
        return d


def weights_id(path: str | os.PathLike[str]) -> str:
    """``"sha256:<hex>"`` of a weights file (streamed, so large files are fine)."""
    return f"sha256:{sha256_file(path)}"


def codes_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type holding codes ``0 .. vocab_size - 1``."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def labels_dtype(num_classes: int) -> np.dtype:
    """Smallest signed type for class ids (signed: -1 marks skipped images)."""
    for dt in (np.int8, np.int16, np.int32):
        if num_classes - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def default_chunk_items(num_tokens: int, itemsize: int) -> int:
    """A power of two so that one view's chunk file holds about 128 KiB of codes."""
    n = max(1, _CHUNK_TARGET_BYTES // max(1, num_tokens * itemsize))
    return int(min(16384, max(16, 2 ** int(math.log2(n)))))


# --------------------------------------------------------------------------- store
class ChunkedItems:
    """Items written chunk by chunk into zarr arrays in folder ``path``, each chunk marked in a
    ``done`` array of one flag per item (written last). Subclasses list a chunk's files."""

    path: Path
    done: Any

    def _chunk_files(self, chunk: int) -> list[Path]:
        """Every file that must exist for ``chunk`` to be readable (``done``'s last)."""
        raise NotImplementedError

    def _file(self, array: Any, coords: tuple[int, ...]) -> Path:
        return self.path / array.basename / array.metadata.encode_chunk_key(coords)

    def _existing_files(self) -> set[str]:
        found: set[str] = set()
        for dirpath, _, filenames in os.walk(self.path):
            found.update(os.path.join(dirpath, f) for f in filenames)
        return found

    def done_mask(self) -> np.ndarray:
        """``(N,)`` bool: items whose chunk is written (chunks never written read False)."""
        return np.asarray(self.done[:], dtype=bool)

    def missing_chunks(self) -> list[int]:
        """Chunks not fully done, or marked done but with a chunk file gone."""
        done = self.done_mask()
        existing = self._existing_files()
        out = []
        for c in range(self.num_chunks):
            s, e = self.chunk_bounds(c)
            if not done[s:e].all() or any(str(f) not in existing for f in self._chunk_files(c)):
                out.append(c)
        return out

    def __len__(self) -> int:
        return int(self.done.shape[0])

    @property
    def chunk_items(self) -> int:
        return int(self.done.chunks[0])

    @property
    def num_chunks(self) -> int:
        return -(-len(self) // self.chunk_items)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_items
        return start, min(start + self.chunk_items, len(self))


class CodeStore(ChunkedItems):
    """A zarr code store on local disk; create with :meth:`create`, read with :meth:`open`."""

    def __init__(self, path: Path, group: Any, mode: str) -> None:
        self.path = path
        self._group = group
        self.mode = mode
        raw = dict(group.attrs).get(_ATTR_KEY)
        if raw is None:
            raise StoreError(f"{path} is a zarr group but not an avgkit code store; run prepare to create one")
        if raw.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"code store {path} has format version {raw.get('format_version')}, this avgkit reads "
                f"{FORMAT_VERSION}; re-run prepare into a new store"
            )
        self.meta = StoreMeta.from_dict(raw)
        self.codes = group["codes"]
        self.labels = group["labels"]
        self.done = group["done"]
        self._readable: set[int] = set()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        meta: StoreMeta,
        n_items: int,
        *,
        chunk_items: int | None = None,
        overwrite: bool = False,
    ) -> CodeStore:
        """An empty store for ``n_items`` items (nothing done yet)."""
        import zarr

        path = Path(path)
        if path.exists() and not overwrite:
            raise StoreError(f"{path} already exists; pass overwrite=True or choose another path")
        if n_items <= 0:
            raise StoreError(f"cannot create a code store for {n_items} items; the source is empty")
        cdt = codes_dtype(meta.vocab_size)
        t, a = meta.num_tokens, meta.num_views
        chunk_items = int(chunk_items or default_chunk_items(t, cdt.itemsize))
        config: ArrayConfigParams = {"write_empty_chunks": True}  # an all-zero chunk must still exist on disk
        group = zarr.create_group(
            store=str(path), zarr_format=3, overwrite=overwrite, attributes={_ATTR_KEY: meta.to_dict()}
        )
        shape: tuple[int, ...]
        chunks: tuple[int, ...]
        if a == 1:
            shape, chunks = (n_items, t), (chunk_items, t)
        else:
            shape, chunks = (n_items, a, t), (chunk_items, 1, t)
        # codes are near-uniform over the codebook: compression saves ~5% on disk but
        # makes scattered chunk reads 2-3x slower, so they are stored raw
        group.create_array(
            "codes", shape=shape, dtype=cdt, chunks=chunks, fill_value=0, config=config, compressors=None
        )
        group.create_array(
            "labels",
            shape=(n_items,),
            dtype=labels_dtype(max(1, meta.num_classes)),
            chunks=(chunk_items,),
            fill_value=SKIPPED_LABEL,
            config=config,
        )
        group.create_array("done", shape=(n_items,), dtype=bool, chunks=(chunk_items,), fill_value=False, config=config)
        return cls(path, group, "r+")

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, mode: Literal["r", "r+"] = "r", verify: bool = True) -> CodeStore:
        """Open an existing store; with ``verify`` raise unless every item is extracted."""
        import zarr

        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise StoreError(f"no code store at {path}; run prepare to create it")
        try:
            group = zarr.open_group(str(path), mode=mode, zarr_format=3)
        except Exception as e:  # noqa: BLE001 - zarr raises various types for bad metadata
            raise StoreError(f"cannot open code store {path}: {e}") from e
        store = cls(path, group, mode)
        if verify:
            store.verify()
        return store

    # ------------------------------------------------------------------ geometry
    @property
    def n_items(self) -> int:
        return len(self)

    @property
    def num_views(self) -> int:
        return self.meta.num_views

    @property
    def num_tokens(self) -> int:
        return self.meta.num_tokens

    @property
    def vocab_size(self) -> int:
        return self.meta.vocab_size

    def codes_nbytes(self) -> int:
        return int(np.prod(self.codes.shape)) * self.codes.dtype.itemsize

    # ------------------------------------------------------------------ chunk files
    def _chunk_files(self, chunk: int) -> list[Path]:
        """Every file that must exist for ``chunk`` to be readable."""
        files = []
        if self.num_views == 1:
            files.append(self._file(self.codes, (chunk, 0)))
        else:
            files.extend(self._file(self.codes, (chunk, v, 0)) for v in range(self.num_views))
        files.append(self._file(self.labels, (chunk,)))
        files.append(self._file(self.done, (chunk,)))
        return files

    def verify(self) -> None:
        """Raise :class:`IncompleteStoreError` naming how much is missing and the fix."""
        missing = self.missing_chunks()
        if not missing:
            return
        n_missing = sum(e - s for s, e in map(self.chunk_bounds, missing))
        raise IncompleteStoreError(
            f"code store {self.path} is incomplete: {n_missing} of {len(self)} items missing "
            f"({len(missing)} of {self.num_chunks} chunks); re-run prepare with the same settings to finish it"
        )

    # ------------------------------------------------------------------ writing
    def write_chunk(self, chunk: int, codes: np.ndarray, labels: np.ndarray, *, durable: bool = True) -> None:
        """Write one whole chunk: codes ``(n, [A,] T)``, labels ``(n,)``, then mark it done.

        ``durable`` fsyncs the code and label files before ``done`` is written, so even
        a power cut cannot leave a chunk marked done without its codes.
        """
        if self.mode == "r":
            raise StoreError(f"code store {self.path} is open read-only")
        s, e = self.chunk_bounds(chunk)
        shape = (e - s, self.num_tokens) if self.num_views == 1 else (e - s, self.num_views, self.num_tokens)
        codes = np.asarray(codes)
        if codes.shape != shape:
            raise StoreError(f"chunk {chunk} expects codes of shape {shape}, got {codes.shape}")
        labels = np.asarray(labels)
        if labels.shape != (e - s,):
            raise StoreError(f"chunk {chunk} expects {e - s} labels, got shape {labels.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.vocab_size):
            raise StoreError(
                f"codes outside [0, {self.vocab_size}) in chunk {chunk}: the tokenizer does not match the "
                f"store's vocabulary"
            )
        self.codes[s:e] = codes.astype(self.codes.dtype, copy=False)
        self.labels[s:e] = labels.astype(self.labels.dtype, copy=False)
        if durable:
            _fsync_files(self._chunk_files(chunk)[:-1])
        self.done[s:e] = np.ones(e - s, dtype=bool)
        if durable:
            _fsync_files(self._chunk_files(chunk)[-1:])

    def finalize(self, skipped: Iterable[dict[str, Any]] = ()) -> None:
        """Record class counts and the skipped images; mark the store complete."""
        self.verify()
        labels = self.read_labels()
        counts = np.bincount(labels[labels >= 0], minlength=self.meta.num_classes)
        self.meta.class_counts = [int(c) for c in counts]
        self.meta.skipped = sorted(skipped, key=lambda s: s["index"])
        self.meta.fingerprint = self.content_fingerprint()
        self.meta.complete = True
        self._group.attrs.update({_ATTR_KEY: self.meta.to_dict()})

    def ensure_fingerprint(self) -> str:
        """The stored fingerprint; a store finished by an older version gets it now (opened ``r+``)."""
        if self.meta.fingerprint is None:
            self.meta.fingerprint = self.content_fingerprint()
            self._group.attrs.update({_ATTR_KEY: self.meta.to_dict()})
        return self.meta.fingerprint

    def content_fingerprint(self, chunks_per_read: int = 64) -> str:
        """``"sha256:<hex>"`` over every item's codes and label (read chunk by chunk).

        Computed once, when extraction finishes, and kept in the store's metadata, so a run
        can record which codes it trained on and compare them later without re-reading.
        """
        import hashlib

        digest = hashlib.sha256()
        done = self.done_mask()
        for start in range(0, self.num_chunks, chunks_per_read):
            group = list(range(start, min(self.num_chunks, start + chunks_per_read)))
            codes = self.read_chunks(group, done=done)
            for c in group:
                s, e = self.chunk_bounds(c)
                digest.update(np.ascontiguousarray(codes[c]).tobytes())
                digest.update(np.asarray(self.labels[s:e], dtype=np.int64).tobytes())
        return f"sha256:{digest.hexdigest()}"

    def cleanup_partial_files(self) -> int:
        """Remove temporary files left by writes that a crash interrupted."""
        n = 0
        for dirpath, _, filenames in os.walk(self.path):
            for f in filenames:
                if f.endswith(".partial"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(dirpath, f))
                        n += 1
        return n

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Exclusive right to write (one extraction per store at a time).

        An OS file lock, released by the kernel even when the writer is killed.
        """
        import fcntl

        fd = os.open(self.path / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"another process is writing to {self.path}; wait for it or stop it") from None
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ reading
    def _check_readable(self, chunks: Sequence[int], done: np.ndarray | None = None) -> None:
        readonly = self.mode == "r"
        for c in chunks:
            if readonly and c in self._readable:
                continue
            s, e = self.chunk_bounds(c)
            done_here = np.asarray(self.done[s:e]) if done is None else done[s:e]
            if not done_here.all():
                raise MissingChunkError(
                    f"items {s}..{e - 1} of code store {self.path} were never written (chunk {c}); "
                    f"re-run prepare to finish the store"
                )
            absent = [f for f in self._chunk_files(c) if not f.exists()]
            if absent:
                raise MissingChunkError(
                    f"chunk file {absent[0]} of code store {self.path} is missing; re-run prepare to rewrite it"
                )
            if readonly:  # nothing in this process can unwrite it: check each chunk once
                self._readable.add(c)

    def read_chunk(self, chunk: int, view: int | None = None, *, done: np.ndarray | None = None) -> np.ndarray:
        """Codes of one chunk, ``(n, T)`` for ``view`` or ``(n, [A,] T)``; raises if unwritten.

        ``done``: the store's done mask when the caller already has it (saves a read).
        """
        return self.read_chunks([chunk], view, done=done)[chunk]

    def read_chunks(
        self, chunks: Sequence[int], view: int | None = None, *, done: np.ndarray | None = None
    ) -> dict[int, np.ndarray]:
        """Several chunks in one zarr call (its reads then run concurrently).

        Far faster than one call per chunk for scattered random access.
        """
        chunks = sorted(set(chunks))
        self._check_readable(chunks, done)
        bounds = [self.chunk_bounds(c) for c in chunks]
        rows = np.concatenate([np.arange(s, e) for s, e in bounds]) if bounds else np.zeros(0, np.int64)
        if view is None or self.num_views == 1:
            sel: tuple[Any, ...] = (rows,) + (slice(None),) * (self.codes.ndim - 1)
        else:
            sel = (rows, view, slice(None))
        data = np.asarray(self.codes.get_orthogonal_selection(sel))
        out, at = {}, 0
        for c, (s, e) in zip(chunks, bounds, strict=True):
            out[c] = data[at : at + e - s]
            at += e - s
        return out

    def read_codes(self) -> np.ndarray:
        """All codes ``(N, [A,] T)`` in their stored dtype; raises if any chunk is unwritten."""
        self._check_readable(range(self.num_chunks), self.done_mask())
        return np.asarray(self.codes[:])

    def read_labels(self) -> np.ndarray:
        """All labels ``(N,)`` as int64 (``-1``: skipped image); raises if any chunk is unwritten."""
        self._check_readable(range(self.num_chunks), self.done_mask())
        return np.asarray(self.labels[:], dtype=np.int64)

    # ------------------------------------------------------------------ compatibility
    def check_compatible(
        self,
        *,
        vocab_size: int | None = None,
        num_tokens: int | None = None,
        tokenizer: str | None = None,
        preset: str | None = None,
        weights: str | None = None,
        resolution: int | tuple[int, int] | None = None,
    ) -> None:
        """Raise :class:`IncompatibleStoreError` if the store does not fit a recipe.

        Only the arguments given are checked; the message names the first mismatch. Sizes
        compare as ``(H, W)`` (``32`` and ``[32, 32]`` are the same) and read ``32x64``.
        """
        m = self.meta
        checks: list[tuple[str, Any, Any]] = [
            ("tokenizer", tokenizer, m.tokenizer),
            ("tokenizer preset", preset, m.preset),
            ("vocabulary size", vocab_size, m.vocab_size),
            ("resolution", None if resolution is None else _Size(resolution), _Size(m.resolution)),
            ("tokens per image", num_tokens, m.num_tokens),
            ("tokenizer weights", weights, m.weights),
        ]
        for what, want, have in checks:
            if want is not None and want != have:
                made_by = m.tokenizer + (f":{m.preset}" if m.preset else "")
                raise IncompatibleStoreError(
                    f"code store {self.path} has {what} {have!r} (made by tokenizer {made_by!r}) but the recipe "
                    f"expects {want!r}; re-run prepare with the recipe's tokenizer into a new store"
                )

    def summary(self) -> str:
        m = self.meta
        return (
            f"{self.path}: {len(self)} items x {m.num_views} view(s) x {m.num_tokens} tokens, "
            f"vocab {m.vocab_size}, tokenizer {m.tokenizer}{':' + m.preset if m.preset else ''}, "
            f"{size_text(m.resolution)}px, augmentation {m.augmentation}, {'complete' if m.complete else 'incomplete'}"
        )


class _Size:
    """An image size in a compatibility check: equal by ``(H, W)``, shown as ``32`` or ``32x64``."""

    def __init__(self, size: Any) -> None:
        self.hw = image_hw(size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Size) and self.hw == other.hw

    def __repr__(self) -> str:
        return size_text(self.hw)


def _fsync_files(paths: Iterable[Path]) -> None:
    paths = list(paths)
    fsync_path(*paths)
    fsync_path(*{p.parent for p in paths})  # the rename that published a file lives in its directory


__all__ = [
    "FORMAT_VERSION",
    "SKIPPED_LABEL",
    "CodeStore",
    "IncompatibleStoreError",
    "IncompleteStoreError",
    "MissingChunkError",
    "StoreError",
    "StoreMeta",
    "codes_dtype",
    "default_chunk_items",
    "labels_dtype",
    "weights_id",
]
