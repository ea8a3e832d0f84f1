"""Shared by the text plugin's tests: a tiny captioned image folder."""

from __future__ import annotations

import json

import numpy as np


def captioned_folder(root, captions):
    """8x8 grey images in two sub-folders, named by a ``captions.jsonl``: dark or light by the caption's
    words, every other row black for "stripes"."""
    from PIL import Image

    rows = []
    for i, caption in enumerate(captions):
        path = f"set{i % 2}/{i:03d}.png"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.full((8, 8), 40 if "dark" in caption else 210, dtype=np.uint8)
        if "stripes" in caption:
            pixels[::2] = 0
        Image.fromarray(pixels).save(root / path)
        rows.append(json.dumps({"path": path, "caption": caption}))
    (root / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return root
