"""A frozen text encoder's caption features in the code store, extracted once.

A text-conditioned run whose conditioner has a frozen encoder (``conditioner: {name:
text, encoder: t5 | clip, path: DIR}``) trains on that encoder's features of each
distinct caption, never on the encoder itself: ``avgkit prepare`` (and ``avgkit train``,
when they are missing) extract them into the code store, beside the codes::

    text_features/            zarr group; attrs["avgkit"]: the encoder's identity and more
      values  (C, T, E)       float32 or float16: caption c's features (c: its id, the
                              store's ``class_names[c]``), zero past its last token
      mask    (C, T)  bool    True at the caption's real tokens
      done    (C,)    bool    True once the row is written

``C`` is the number of distinct captions (the labels are caption ids), ``T`` the longest
tokenized caption (at most the encoder's ``max_length``), ``E`` the encoder's width.
The metadata records the encoder (:meth:`avgkit.interfaces.Conditioner.frozen_encoder`:
its kind, folder, a sha256 of the folder's files, ``max_length`` and the stored dtype);
features of another encoder are refused. Rows are written a chunk at a time, values and
mask before ``done`` (fsynced in between), so an interrupted extraction resumes at the
first unfinished chunk; a group whose creation was cut short is made again.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avgkit.data.store import ChunkedItems, CodeStore, StoreError, _fsync_files

GROUP = "text_features"
FORMAT_VERSION = 1
_ATTR_KEY = "avgkit"
_CHUNK_TARGET_BYTES = 1 << 20  # one chunk file of values: about 1 MiB
#: identity entries that are recorded, not compared (a moved or copied encoder folder is the same encoder)
RECORDED_ONLY = ("path", "files")
DTYPES = {"float32": np.float32, "float16": np.float16}
#: features up to this size are read into memory for training; larger ones are read batch by batch
IN_MEMORY_BYTES = 1 << 30


class FeatureStoreError(StoreError):
    """The code store's caption features are missing, unfinished or another encoder's."""


def encoder_difference(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first identity entry (besides ``path`` and ``files``) in which two encoders differ."""
    for key in sorted((set(recorded) | set(current)) - set(RECORDED_ONLY)):
        if recorded.get(key) != current.get(key):
            return key
    return None


def describe_encoder(identity: dict[str, Any]) -> str:
    sha = str(identity.get("sha256", "?")).removeprefix("sha256:")[:16]
    return (f"{identity.get('kind')} at {identity.get('path')} (sha256:{sha}, max_length "
            f"{identity.get('max_length')}, {identity.get('dtype')})")


def captions_sha256(captions: Sequence[str]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(list(captions)).encode()).hexdigest()


def default_chunk_items(row_bytes: int) -> int:
    """A power of two of rows making about 1 MiB of values (one row per chunk for large rows)."""
    n = max(1, _CHUNK_TARGET_BYTES // max(1, row_bytes))
    return int(min(4096, 2 ** int(math.log2(n))))


def _mismatch(store_path: Path, key: str, recorded: dict[str, Any], current: dict[str, Any]) -> FeatureStoreError:
    return FeatureStoreError(
        f"code store {store_path} holds the features of another text encoder ({key} differs: "
        f"{describe_encoder(recorded)} there, {describe_encoder(current)} in the recipe); point conditioner.path at "
        f"the encoder they came from, or run `avgkit prepare <recipe> --replace-features` to extract the recipe's")


class CaptionFeatures(ChunkedItems):
    """The ``text_features`` group of one code store; :meth:`open` it, :func:`extract_features` fills it."""

    def __init__(self, store_path: Path, group: Any, mode: str) -> None:
        self.store_path = store_path
        self.path = store_path / GROUP
        self._group = group
        self.mode = mode
        meta = dict(group.attrs).get(_ATTR_KEY)
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise FeatureStoreError(f"{self.path} is not a text feature group this avgkit reads; re-run "
                                    f"`avgkit prepare` to extract the features again")
        self.meta: dict[str, Any] = meta
        try:
            self.values = group["values"]
            self.mask = group["mask"]
            self.done = group["done"]
        except KeyError:
            raise FeatureStoreError(f"{self.path} was left unfinished while being created; re-run `avgkit prepare` "
                                    f"to extract the features again") from None

    @classmethod
    def open(cls, store_path: str | Path, mode: str = "r") -> CaptionFeatures | None:
        """The store's features, or ``None`` when it has none."""
        import zarr

        store_path = Path(store_path)
        if not (store_path / GROUP / "zarr.json").is_file():
            return None
        try:
            group = zarr.open_group(str(store_path / GROUP), mode=mode, zarr_format=3)
        except Exception as e:  # noqa: BLE001 - zarr raises various types for bad metadata
            raise FeatureStoreError(f"cannot open {store_path / GROUP} ({type(e).__name__}); re-run `avgkit prepare` "
                                    f"to extract the features again") from None
        return cls(store_path, group, mode)

    @classmethod
    def create(cls, store_path: Path, identity: dict[str, Any], captions: Sequence[str], length: int,
               chunk_items: int | None = None) -> CaptionFeatures:
        import zarr

        dtype = np.dtype(DTYPES[identity["dtype"]])
        width = int(identity["width"])
        n = len(captions)
        chunk_items = int(chunk_items or default_chunk_items(length * width * dtype.itemsize))
        meta = {"format_version": FORMAT_VERSION, "encoder": identity, "captions": n,
                "captions_sha256": captions_sha256(captions), "complete": False}
        root = zarr.open_group(str(store_path), mode="r+", zarr_format=3)
        group = root.create_group(GROUP, attributes={_ATTR_KEY: meta})
        config = {"write_empty_chunks": True}  # every written chunk exists on disk, zeros or not
        group.create_array("values", shape=(n, length, width), dtype=dtype, chunks=(chunk_items, length, width),
                           fill_value=0, config=config, compressors=None)
        group.create_array("mask", shape=(n, length), dtype=bool, chunks=(chunk_items, length), fill_value=False,
                           config=config)
        group.create_array("done", shape=(n,), dtype=bool, chunks=(chunk_items,), fill_value=False, config=config)
        return cls(store_path, group, "r+")

    # ------------------------------------------------------------------ geometry
    @property
    def encoder(self) -> dict[str, Any]:
        return dict(self.meta.get("encoder") or {})

    @property
    def length(self) -> int:
        return int(self.values.shape[1])

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.values.shape)) * self.values.dtype.itemsize

    def _chunk_files(self, chunk: int) -> list[Path]:
        """The values, mask and done files of ``chunk`` (``done`` last)."""
        return [self._file(self.values, (chunk, 0, 0)), self._file(self.mask, (chunk, 0)),
                self._file(self.done, (chunk,))]

    # ------------------------------------------------------------------ writing
    def write_chunk(self, chunk: int, values: np.ndarray, mask: np.ndarray, *, durable: bool = True) -> None:
        s, e = self.chunk_bounds(chunk)
        if values.shape != (e - s, *self.values.shape[1:]) or mask.shape != (e - s, self.length):
            raise FeatureStoreError(f"chunk {chunk} of {self.path} takes values {(e - s, *self.values.shape[1:])} "
                                    f"and mask {(e - s, self.length)}, not {values.shape} and {mask.shape}")
        self.values[s:e] = values.astype(self.values.dtype, copy=False)
        self.mask[s:e] = mask.astype(bool, copy=False)
        files = self._chunk_files(chunk)
        if durable:
            _fsync_files(files[:-1])
        self.done[s:e] = np.ones(e - s, dtype=bool)
        if durable:
            _fsync_files(files[-1:])

    def finalize(self) -> None:
        missing = self.missing_chunks()
        if missing:  # pragma: no cover - extract_features writes every missing chunk first
            raise FeatureStoreError(f"{self.path} still misses {len(missing)} chunks")
        self.meta["complete"] = True
        self._group.attrs.update({_ATTR_KEY: self.meta})

    # ------------------------------------------------------------------ reading
    def read(self, ids: np.ndarray) -> tuple[Tensor, Tensor]:
        """Rows ``ids`` (any order, repeats allowed): values ``(B, T, E)`` and mask ``(B, T)``."""
        ids = np.asarray(ids, dtype=np.int64)
        rows, inverse = np.unique(ids, return_inverse=True)
        values = np.asarray(self.values.get_orthogonal_selection((rows, slice(None), slice(None))))
        mask = np.asarray(self.mask.get_orthogonal_selection((rows, slice(None))))
        return torch.from_numpy(values[inverse]), torch.from_numpy(mask[inverse])

    def read_all(self) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(np.asarray(self.values[:])), torch.from_numpy(np.asarray(self.mask[:], dtype=bool))


def recorded_encoder(store_path: str | Path) -> dict[str, Any] | None:
    """The encoder a store's features came from (``None``: no readable features)."""
    try:
        found = CaptionFeatures.open(store_path)
    except FeatureStoreError:
        return None
    return found.encoder if found is not None else None


def encode_captions(conditioner: Any, ids: Tensor, mask: Tensor, dtype: str, batch_size: int) -> np.ndarray:
    """The frozen encoder's features of token ids ``(n, T)``, ``batch_size`` rows at a time, as ``dtype``."""
    out = []
    for start in range(0, len(ids), max(1, batch_size)):
        feats = conditioner.features(ids[start : start + batch_size], mask[start : start + batch_size])
        out.append(feats.float().cpu().numpy().astype(DTYPES[dtype], copy=False))
    return np.concatenate(out)


@dataclass
class FeatureReport:
    """What one :func:`extract_features` call did."""

    path: str
    captions: int
    encoded: int  # captions encoded by this call
    resumed: int  # captions already done before it
    restarted: bool  # an unreadable or replaced group was removed first
    seconds: float

    def __str__(self) -> str:
        what = "made again, " if self.restarted else ""
        return (f"{self.path}: features of {self.captions} captions, {what}{self.encoded} encoded now, "
                f"{self.resumed} already done ({self.seconds:.1f} s)")


def extract_features(
    store_path: str | Path,
    conditioner: Any,
    captions: Sequence[str],
    identity: dict[str, Any],
    *,
    batch_size: int = 64,
    replace: bool = False,
    chunk_items: int | None = None,
    durable: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> FeatureReport:
    """Extract the features of ``captions`` (the store's caption ids, in order) into the code store.

    ``identity`` is ``conditioner.frozen_encoder(...)``. Resumes an unfinished extraction
    of the same encoder; features of another encoder are refused unless ``replace``.
    ``on_chunk(chunk)`` runs after each chunk is committed; ``say`` is told when
    extraction starts. Finished features of the same encoder are left as they are (the
    encoder is not loaded).
    """
    t0 = time.monotonic()
    store_path = Path(store_path)
    store = CodeStore.open(store_path, mode="r+", verify=False)
    restarted = False

    def remove_group() -> None:
        nonlocal restarted
        shutil.rmtree(store_path / GROUP)
        restarted = True

    with store.writer_lock():
        try:
            found = CaptionFeatures.open(store_path, mode="r+")
        except FeatureStoreError:  # cut short while being created: start again
            found = None
            remove_group()
        if found is not None:
            key = encoder_difference(found.encoder, identity)
            if key is not None and not replace:
                raise _mismatch(store_path, key, found.encoder, identity)
            if key is not None or found.meta.get("captions_sha256") != captions_sha256(captions):
                found = None
                remove_group()
        if found is not None:
            if found.encoder != identity:  # the same encoder, moved or touched: record where it is now
                found.meta["encoder"] = identity
                found._group.attrs.update({_ATTR_KEY: found.meta})
            if found.meta.get("complete") and not found.missing_chunks():
                return FeatureReport(str(found.path), len(found), 0, len(found), False, time.monotonic() - t0)
        if say is not None:
            say(f"extracting the text features of {len(captions)} captions ({describe_encoder(identity)}) into "
                f"{store_path / GROUP}")
        tokens = conditioner.tokenize(list(captions))
        assert tokens.mask is not None
        if found is not None and found.length != tokens.values.shape[1]:  # pragma: no cover - same encoder files
            found = None
            remove_group()
        if found is None:
            found = CaptionFeatures.create(store_path, identity, captions, tokens.values.shape[1], chunk_items)
        missing = found.missing_chunks()
        encoded = 0
        for chunk in missing:
            s, e = found.chunk_bounds(chunk)
            values = encode_captions(conditioner, tokens.values[s:e], tokens.mask[s:e], identity["dtype"], batch_size)
            found.write_chunk(chunk, values, tokens.mask[s:e].cpu().numpy(), durable=durable)
            encoded += e - s
            if on_chunk is not None:
                on_chunk(chunk)
        found.finalize()
    return FeatureReport(str(found.path), len(found), encoded, len(found) - encoded, restarted,
                         time.monotonic() - t0)


def open_features(store_path: str | Path, identity: dict[str, Any], captions: Sequence[str]) -> CaptionFeatures:
    """The store's finished features of ``captions``, refused unless they are ``identity``'s encoder's."""
    store_path = Path(store_path)
    found = CaptionFeatures.open(store_path)
    if found is None:
        raise FeatureStoreError(f"code store {store_path} holds no text features; run `avgkit prepare <recipe>` to "
                                f"extract them")
    key = encoder_difference(found.encoder, identity)
    if key is not None:
        raise _mismatch(store_path, key, found.encoder, identity)
    if found.meta.get("captions_sha256") != captions_sha256(captions):
        raise FeatureStoreError(f"the text features in {store_path} are of other captions than its codes; run "
                                f"`avgkit prepare <recipe> --replace-features` to extract them again")
    if not found.meta.get("complete") or found.missing_chunks():
        raise FeatureStoreError(f"the text features in {store_path} are unfinished; run `avgkit prepare <recipe>` "
                                f"to finish them")
    return found


__all__ = [
    "GROUP",
    "IN_MEMORY_BYTES",
    "CaptionFeatures",
    "FeatureReport",
    "FeatureStoreError",
    "describe_encoder",
    "encode_captions",
    "encoder_difference",
    "extract_features",
    "open_features",
    "recorded_encoder",
]
