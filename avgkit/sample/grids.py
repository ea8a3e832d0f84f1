"""Sampling during and after training (grids are drawn by :func:`avgkit.images.save_labelled_grid`)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor

from avgkit.interfaces import Backbone, Conditioner, Sampler, Tokenizer


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
