"""Atomic file writes and file hashes: the one implementation every part of avgkit uses.

A file is written under a temporary name in its own folder, fsynced, and renamed onto
its final name, so a reader (or a resumed run after a crash) sees either the old file or
the complete new one, never half of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_path",
    "save_safetensors",
    "sha256_file",
]

_CHUNK = 1 << 20

# the mode a plainly created file gets (mkstemp makes 0600 files, which other users cannot read)
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def fsync_path(*paths: str | os.PathLike[str]) -> None:
    """Flush files or folders to disk (a folder's fsync makes the renames in it durable)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], object], *, durable: bool = True) -> Path:
    """Call ``write(tmp)`` for a temporary name beside ``path``, then rename it onto ``path``.

    The temporary name keeps ``path``'s suffix, because some writers (numpy's ``savez``,
    matplotlib) choose the format from it. ``durable`` fsyncs the file before the rename;
    the parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if durable:
            fsync_path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), durable=durable)


def atomic_write_text(path: str | Path, text: str, *, durable: bool = True) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable=durable)


def atomic_write_json(
    path: str | Path, data: Any, *, indent: int = 2, sort_keys: bool = False, default: Callable[[Any], Any] | None = None
) -> Path:
    """``data`` as JSON (one trailing newline)."""
    return atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, default=default) + "\n")


_SAFETENSORS_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
    "uint16": "U16", "uint32": "U32", "uint64": "U64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}


def _write_canonical_safetensors(path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None) -> None:
    """A safetensors file whose bytes depend only on the tensors and the metadata.

    The JSON header has sorted keys and no spaces; the data is laid out largest element
    size first, then by name (the order safetensors itself uses). Identical tensors and
    metadata therefore give identical files, so their hashes can be compared.
    """
    import struct

    import torch

    entries = []
    for name, t in tensors.items():
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        entries.append((name, t))
    entries.sort(key=lambda e: (-e[1].element_size(), e[0]))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    offset = 0
    for name, t in entries:
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[str(t.dtype).removeprefix("torch.")], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        for _, t in entries:
            if t.numel():
                handle.write(t.reshape(-1).view(torch.uint8).numpy().data)


def save_safetensors(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """A safetensors file, written atomically (tensors detached, moved to CPU, made contiguous).

    The bytes depend only on the tensors and metadata (sorted header, fixed layout), so
    two saves of the same weights hash alike. Tensors that share storage must be
    deduplicated first.
    """
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = dict(metadata) if metadata is not None else None
    return atomic_write(path, lambda tmp: _write_canonical_safetensors(tmp, flat, meta))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (streamed, so large files are fine)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
