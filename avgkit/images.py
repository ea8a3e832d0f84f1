"""Sampled images as files: uint8 arrays, PNGs and image grids (labelled or plain).

Float images in ``[-1, 1]`` become uint8 as ``round((x + 1) * 127.5)`` clamped to
``[0, 255]`` (the rule avgkit's evaluation uses), and grayscale is repeated to three
channels so every saved array is ``N x H x W x 3`` (the ADM sample format).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avgkit.io import atomic_write

#: Grid cells are upscaled (nearest) to at least this many pixels so tiny images stay visible.
MIN_CELL = 48


def to_uint8_hwc(images: Tensor) -> np.ndarray:
    """``(N, C, H, W)`` floats in ``[-1, 1]`` (C = 1 or 3) -> ``(N, H, W, 3)`` uint8."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1|3, H, W), got shape {tuple(images.shape)}")
    x = torch.round((images.detach().float().cpu() + 1.0) * 127.5).clamp_(0, 255).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def to_pil(images: Tensor) -> list:
    """PIL images (mode ``L`` for one channel, ``RGB`` for three) from floats in ``[-1, 1]``."""
    from PIL import Image

    arr = to_uint8_hwc(images)
    if images.shape[1] == 1:
        return [Image.fromarray(np.ascontiguousarray(a[..., 0])) for a in arr]
    return [Image.fromarray(a) for a in arr]


def png_name(index: int, label: int, kind: str = "class") -> str:
    """``000123-class7.png``; ``kind="prompt"`` names the label a prompt's index (``000123-prompt0.png``)."""
    return f"{index:06d}-{kind}{label}.png"


def save_pngs(images: np.ndarray, labels: np.ndarray | Sequence[int], indices: np.ndarray | Sequence[int],
              folder: Path, kind: str = "class") -> None:
    """One PNG per image, named by its global index and class (or prompt, see :func:`png_name`)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for img, label, index in zip(images, labels, indices, strict=True):
        Image.fromarray(img).save(folder / png_name(int(index), int(label), kind), format="PNG")


def tile_grid(
    images: np.ndarray, rows: Sequence[Sequence[int]], *, pad: int = 2, left: int = 0, top: int = 0, scale: int = 1
) -> np.ndarray:
    """Images tiled on a white ``(H, W, 3)`` uint8 canvas: ``images[rows[r][c]]`` in row ``r``, column ``c``.

    Cells are ``pad`` pixels apart. ``images``: ``(N, h, w, 3)`` uint8; ``scale`` upscales each cell (nearest); ``left``
    and ``top`` leave room for row labels and a title.
    """
    cells = images.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else images
    _, h, w, _ = cells.shape
    cols = max((len(r) for r in rows), default=0)
    canvas = np.full((top + len(rows) * (h + pad) + pad, left + cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, members in enumerate(rows):
        y = top + pad + r * (h + pad)
        for c, i in enumerate(members):
            x = left + pad + c * (w + pad)
            canvas[y : y + h, x : x + w] = cells[i]
    return canvas


def label_font(size: int = 12):
    """PIL's default font at ``size`` (a scalable font keeps the spaces in titles); the
    bitmap default on Pillow older than 10.1."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def save_labelled_grid(
    images: np.ndarray,
    labels: Sequence[int],
    path: Path,
    title: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """A PNG with one row per class (in order of first appearance), the class on the left.

    ``images``: ``(N, H, W, 3)`` uint8 (see :func:`to_uint8_hwc`). A row is labelled with
    ``class_names[class]`` when given, else with the class id.
    """
    from PIL import Image, ImageDraw

    labels = [int(x) for x in labels]
    _, h, w, _ = images.shape
    scale = max(1, -(-MIN_CELL // max(h, w)))
    classes = list(dict.fromkeys(labels))
    names = [class_names[c] if class_names and 0 <= c < len(class_names) else str(c) for c in classes]
    rows = [[i for i, label in enumerate(labels) if label == c] for c in classes]
    font = label_font()
    margin = max(8 + max(math.ceil(font.getlength(s)) for s in names), 24)
    pad, top = 2, (16 if title else 0)
    canvas = Image.fromarray(tile_grid(images, rows, pad=pad, left=margin, top=top, scale=scale))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for r, name in enumerate(names):
        y = top + pad + r * (h * scale + pad)
        draw.text((4, y + h * scale // 2 - 6), name, fill="black", font=font)
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


def grid_selection(labels: np.ndarray, max_classes: int, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` images of each of the first ``max_classes`` classes."""
    chosen: list[int] = []
    for cls in list(dict.fromkeys(labels.tolist()))[:max_classes]:
        chosen.extend(np.flatnonzero(labels == cls)[:per_class].tolist())
    return np.asarray(chosen, dtype=np.int64)
