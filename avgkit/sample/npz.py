"""Writing ``.npz`` files atomically, deterministically and without holding them in memory.

Members are stored uncompressed (``np.load`` and ADM's evaluator read them as usual)
with a fixed timestamp, so the same arrays always give the same bytes. A member can be
streamed from chunks, so 50,000 images are merged from shards with one shard in memory
at a time.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.lib import format as npy_format

from avgkit.io import atomic_write

_EPOCH = (1980, 1, 1, 0, 0, 0)


class Member(NamedTuple):
    """One array of an npz: its name (``arr_0``), final shape and dtype, and its data in chunks."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: Iterable[np.ndarray]


def _write_member(archive: zipfile.ZipFile, member: Member) -> None:
    info = zipfile.ZipInfo(f"{member.name}.npy", date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    dtype = np.dtype(member.dtype)
    expected = int(np.prod(member.shape, dtype=np.int64)) * dtype.itemsize
    written = 0
    with archive.open(info, "w", force_zip64=True) as f:
        header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(member.shape)}
        npy_format.write_array_header_1_0(f, header)
        for chunk in member.chunks:
            data = np.ascontiguousarray(chunk, dtype=dtype)
            f.write(data.tobytes())
            written += data.nbytes
    if written != expected:
        raise ValueError(f"npz member {member.name}: wrote {written} bytes, expected {expected} for shape {member.shape}")


def write_npz(path: str | Path, members: Iterable[Member] | Mapping[str, np.ndarray]) -> Path:
    """Write members (or a name -> array mapping) to ``path`` via a temporary file and a rename."""
    path = Path(path)
    if isinstance(members, Mapping):
        members = [Member(k, tuple(v.shape), v.dtype, [v]) for k, v in members.items()]

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for member in members:
                _write_member(archive, member)

    return atomic_write(path, write)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an npz (never unpickling)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
