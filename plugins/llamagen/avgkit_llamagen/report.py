"""How good is a trained tokenizer: held-out PSNR, codebook usage, a reconstruction grid."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor

from avgkit.io import atomic_write_bytes

from .vq_model import LlamaGenVQ


class VQReport(BaseModel):
    """Reconstruction quality on a set of images (PSNR on the [0, 1] scale, averaged per image)."""

    num_images: int
    psnr: float
    mse: float
    codes_used: int
    codebook_size: int
    codebook_usage: float
    code_perplexity: float

    def summary(self) -> str:
        return (
            f"PSNR {self.psnr:.2f} dB on {self.num_images} images, codebook usage "
            f"{self.codebook_usage:.1%} ({self.codes_used}/{self.codebook_size}), perplexity {self.code_perplexity:.1f}"
        )


@torch.no_grad()
def reconstruct(model: LlamaGenVQ, images: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """(codes, reconstructions) for ``images`` in batches, on the model's device, results on the CPU."""
    device = next(model.parameters()).device
    codes, recons = [], []
    for batch in images.split(batch_size):
        c = model.encode(batch.to(device))
        codes.append(c.cpu())
        recons.append(model.decode(c).float().cpu())
    return torch.cat(codes), torch.cat(recons)


@torch.no_grad()
def reconstruction_report(model: LlamaGenVQ, images: Tensor, batch_size: int = 256) -> VQReport:
    """Encode and decode ``images`` ((N, C, H, W) in [-1, 1]) and measure the result."""
    was_training = model.training
    model.eval()
    try:
        codes, recons = reconstruct(model, images, batch_size)
    finally:
        model.train(was_training)
    mse01 = ((recons - images.float()) / 2).pow(2).flatten(1).mean(1)  # [-1, 1] -> [0, 1] scale
    psnr = (10 * torch.log10(1.0 / mse01.clamp_min(1e-10))).mean().item()
    counts = torch.bincount(codes.flatten(), minlength=model.codebook_size).float()
    p = counts[counts > 0] / counts.sum()
    used = int((counts > 0).sum())
    return VQReport(
        num_images=len(images),
        psnr=psnr,
        mse=float(mse01.mean() * 4),
        codes_used=used,
        codebook_size=model.codebook_size,
        codebook_usage=used / model.codebook_size,
        code_perplexity=math.exp(float(-(p * p.log()).sum())),
    )


def image_grid(rows: list[Tensor], min_size: int = 64) -> Tensor:
    """Rows of images (each (n, C, H, W) in [-1, 1]) tiled into one uint8 (H', W', C) array."""
    grid = torch.stack(rows)  # (R, n, C, H, W)
    r, n, c, h, w = grid.shape
    scale = max(1, math.ceil(min_size / h))
    if scale > 1:
        grid = F.interpolate(grid.flatten(0, 1), scale_factor=scale, mode="nearest").view(r, n, c, h * scale, w * scale)
        h, w = h * scale, w * scale
    pixels = ((grid.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 3, 1, 4, 2).reshape(r * h, n * w, c)


def save_reconstruction_grid(model: LlamaGenVQ, images: Tensor, path: str | Path, count: int = 8) -> Path:
    """PNG with ``count`` originals on top and their reconstructions below."""
    from PIL import Image

    was_training = model.training
    model.eval()
    try:
        originals = images[:count].float()
        _, recons = reconstruct(model, originals)
    finally:
        model.train(was_training)
    array = image_grid([originals, recons]).numpy()
    picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
