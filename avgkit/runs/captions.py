"""A text-conditioned run's caption table: ``captions.json`` in the run directory.

The code store's labels are caption ids; the table says which caption each id is, so
the run's final samples, its periodic grids and ``avgkit sample`` (which marks the
prompts the model was trained on) read captions, not bare ids::

    {"format": "avgkit-captions/1", "captions": ["eighty", "eighty-nine", ...]}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from avgkit.errors import AvgkitError
from avgkit.io import atomic_write_json
from avgkit.runs.layout import RunDir

FORMAT = "avgkit-captions/1"


def write_captions(run_dir: str | Path, captions: Sequence[str]) -> Path:
    path = RunDir(Path(run_dir)).captions
    atomic_write_json(path, {"format": FORMAT, "captions": list(captions)}, indent=1)
    return path


def read_captions(run_dir: str | Path) -> list[str] | None:
    """The run's caption table, or ``None`` for a run without one (class-conditional, or converted)."""
    path = RunDir(Path(run_dir)).captions
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        captions = record["captions"]
    except (OSError, ValueError, KeyError, TypeError):
        raise AvgkitError(f"{path} is not a caption table; delete it or train the run again") from None
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise AvgkitError(f"{path} holds no list of captions; delete it or train the run again")
    return captions


__all__ = ["read_captions", "write_captions"]
