"""Where evaluation files live, how they are hashed, and how they are written.

Every file the evaluator writes goes through a temporary file in the same folder and
``os.replace``, so an interrupted run never leaves a half-written report or cache entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

try:  # the core error type; evaluation also works on its own
    from avgkit.errors import AvgkitError
except ImportError:  # pragma: no cover - only when the core package is incomplete
    AvgkitError = ValueError  # type: ignore[misc,assignment]

__all__ = [
    "AvgkitError",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "avgkit_home",
    "sha256_file",
    "sha256_files",
    "stats_cache_dir",
    "weights_dir",
]

_CHUNK = 1 << 20


def avgkit_home() -> Path:
    """``$AVGKIT_HOME``, or ``~/.cache/avgkit``."""
    env = os.environ.get("AVGKIT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "avgkit"


def weights_dir() -> Path:
    """Folder searched for evaluator weights (Inception, digits CNN)."""
    return avgkit_home() / "weights"


def stats_cache_dir() -> Path:
    """Folder holding cached reference statistics."""
    return avgkit_home() / "stats"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(root: str | Path, files: list[Path]) -> str:
    """One SHA-256 over a folder's files: each relative name and its content hash.

    Renaming, adding, removing or editing any file changes the digest; the order of
    ``files`` does not matter.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one step.

    The temporary file keeps ``path``'s suffix, because some writers (numpy's
    ``savez``) choose the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
