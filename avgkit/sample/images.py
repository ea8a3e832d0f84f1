"""Sampled images as files: uint8 arrays, PNGs and a labelled grid.

Float images in ``[-1, 1]`` become uint8 as ``round((x + 1) * 127.5)`` clamped to
``[0, 255]`` (the rule avgkit's evaluation uses), and grayscale is repeated to three
channels so every saved array is ``N x H x W x 3`` (the ADM sample format).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

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


def png_name(index: int, label: int) -> str:
    return f"{index:06d}-class{label}.png"


def save_pngs(images: np.ndarray, labels: Sequence[int], indices: Sequence[int], folder: Path) -> None:
    """One PNG per image, named by its global index and class."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for img, label, index in zip(images, labels, indices, strict=True):
        Image.fromarray(img).save(folder / png_name(int(index), int(label)), format="PNG")


def save_labelled_grid(images: np.ndarray, labels: Sequence[int], path: Path, title: str | None = None) -> Path:
    """A PNG with one row per class (in order of first appearance), the class id on the left.

    ``images``: ``(N, H, W, 3)`` uint8. Labels are drawn with PIL's default font.
    """
    from PIL import Image, ImageDraw, ImageFont

    labels = [int(x) for x in labels]
    n, h, w, _ = images.shape
    scale = max(1, -(-MIN_CELL // max(h, w)))
    h, w = h * scale, w * scale
    classes = list(dict.fromkeys(labels))
    rows = [[i for i in range(n) if labels[i] == c] for c in classes]
    cols = max(len(r) for r in rows)
    font = ImageFont.load_default()
    margin = max(8 + 7 * max(len(str(c)) for c in classes), 24)
    pad, top = 2, (16 if title else 0)
    canvas = Image.new("RGB", (margin + cols * (w + pad) + pad, top + len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for r, (cls, members) in enumerate(zip(classes, rows, strict=True)):
        y = top + pad + r * (h + pad)
        draw.text((4, y + h // 2 - 6), str(cls), fill="black", font=font)
        for c, i in enumerate(members):
            cell = Image.fromarray(images[i])
            if scale > 1:
                cell = cell.resize((w, h), Image.Resampling.NEAREST)
            canvas.paste(cell, (margin + pad + c * (w + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    canvas.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def grid_selection(labels: np.ndarray, max_classes: int, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` images of each of the first ``max_classes`` classes."""
    chosen: list[int] = []
    for cls in list(dict.fromkeys(labels.tolist()))[:max_classes]:
        chosen.extend(np.flatnonzero(labels == cls)[:per_class].tolist())
    return np.asarray(chosen, dtype=np.int64)
