"""Sampling during and after training, and labelled sample grids (one row per class)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from avgkit.interfaces import Backbone, Conditioner, Sampler, Tokenizer

#: Grid cells are upscaled (nearest) to at least this many pixels so small images stay visible.
MIN_CELL = 48


def grid_labels(num_classes: int, rows: int, per_class: int) -> Tensor:
    """Labels for a grid: ``rows`` classes spread evenly over ``num_classes``, each repeated."""
    rows = max(1, min(rows, num_classes))
    classes = np.unique(np.linspace(0, num_classes - 1, rows).round().astype(np.int64))
    return torch.as_tensor(classes).repeat_interleave(per_class)


@torch.no_grad()
def generate_images(
    backbone: Backbone,
    conditioner: Conditioner,
    sampler: Sampler,
    tokenizer: Tokenizer,
    labels: Tensor,
    *,
    seed: int,
    batch_size: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
) -> Tensor:
    """Images ``(B, C, H, W)`` in ``[-1, 1]`` (CPU, float32) for ``labels``.

    Row ``r`` uses the sampler's per-image seed index ``r``, so a sample does not depend
    on how the labels are batched. Modules are put in eval mode and restored afterwards.
    Sampling runs in the weights' precision (fp32) unless ``autocast`` is given: a
    sampler that captures CUDA graphs must not capture autocast's weight cache.
    """
    modules = [backbone, conditioner, tokenizer]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    out = []
    try:
        for start in range(0, len(labels), batch_size):
            part = labels[start : start + batch_size].to(device)
            index = torch.arange(start, start + len(part), device=device)
            with autocast or contextlib.nullcontext():
                codes = sampler.sample(backbone, conditioner, part, seed=seed, index=index)
            images = tokenizer.decode(codes.to(device))
            out.append(images.float().clamp(-1, 1).cpu())
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)
    return torch.cat(out)


def _to_uint8_rgb(images: Tensor) -> Tensor:
    """Floats in ``[-1, 1]`` -> uint8, quantised as a PNG writer would; grey repeated to RGB."""
    out = ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return out.expand(-1, 3, -1, -1).contiguous() if out.shape[1] == 1 else out[:, :3].contiguous()


def save_class_grid(
    images: Tensor, labels: Tensor, path: Path, class_names: Sequence[str] | None = None, title: str | None = None
) -> Path:
    """A PNG with one row per class (in order of first appearance), the class name on the left."""
    from PIL import Image, ImageDraw, ImageFont

    rgb = _to_uint8_rgb(images)  # (N, 3, H, W)
    n, _, h, w = rgb.shape
    scale = max(1, -(-MIN_CELL // max(h, w)))
    if scale > 1:
        rgb = rgb.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        h, w = h * scale, w * scale
    classes = list(dict.fromkeys(labels.tolist()))
    rows = [[i for i in range(n) if int(labels[i]) == c] for c in classes]
    cols = max(len(r) for r in rows)
    names = [class_names[c] if class_names and 0 <= c < len(class_names) else str(c) for c in classes]
    font = ImageFont.load_default()
    margin = max(8 + 7 * max(len(s) for s in names), 24)
    pad, top = 2, (16 if title else 0)
    canvas = Image.new("RGB", (margin + cols * (w + pad) + pad, top + len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for r, (name, members) in enumerate(zip(names, rows, strict=True)):
        y = top + pad + r * (h + pad)
        draw.text((4, y + h // 2 - 6), name, fill="black", font=font)
        for c, i in enumerate(members):
            cell = Image.fromarray(rgb[i].permute(1, 2, 0).numpy())
            canvas.paste(cell, (margin + pad + c * (w + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    canvas.save(tmp, format="PNG")
    tmp.replace(path)
    return path
