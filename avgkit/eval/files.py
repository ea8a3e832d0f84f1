"""Where evaluation files live, and the content hash of a folder of files.

Every file the evaluator writes goes through :func:`avgkit.io.atomic_write`, so an
interrupted run never leaves a half-written report or cache entry.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from avgkit.errors import AvgkitError
from avgkit.io import sha256_file

__all__ = [
    "AvgkitError",
    "avgkit_home",
    "sha256_files",
    "stats_cache_dir",
    "weights_dir",
]


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
