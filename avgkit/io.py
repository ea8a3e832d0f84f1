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


def save_safetensors(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """A safetensors file, written atomically (tensors detached, moved to CPU, made contiguous).

    Tensors that share storage must be deduplicated first (safetensors refuses them).
    """
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = dict(metadata) if metadata is not None else None
    return atomic_write(path, lambda tmp: save_file(flat, str(tmp), metadata=meta))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (streamed, so large files are fine)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
