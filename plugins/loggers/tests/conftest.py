"""Make ``avgkit_loggers`` importable from a source checkout where it is not installed yet."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("avgkit_loggers") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
