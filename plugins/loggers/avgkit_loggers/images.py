"""PNG files as arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_png(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 (grey and RGBA images converted)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))
