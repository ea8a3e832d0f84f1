"""Make ``avgkit_llamagen`` importable from a source checkout when it is not installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PLUGIN_ROOT = Path(__file__).resolve().parents[1]

if importlib.util.find_spec("avgkit_llamagen") is None:
    sys.path.insert(0, str(PLUGIN_ROOT))
