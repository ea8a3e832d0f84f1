"""Small configs and data shared by the LlamaGen tokenizer tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from avgkit_llamagen.config import VQConfig


def tiny_config(**overrides) -> VQConfig:
    """A 16 px, 4-level tokenizer with VQ-16's key structure minus one level: fast on a CPU."""
    values = dict(
        image_size=16,
        channels=1,
        ch=8,
        ch_mult=(1, 2, 2),
        num_res_blocks=1,
        z_channels=16,
        codebook_size=32,
        codebook_dim=4,
        norm_groups=4,
    )
    values.update(overrides)
    return VQConfig(**values)


def vq16_like_config(**overrides) -> VQConfig:
    """Same module structure (and so the same 344 keys) as VQ-16, with tiny widths."""
    values = dict(image_size=32, ch=8, z_channels=16, codebook_size=64, codebook_dim=8, norm_groups=8)
    values.update(overrides)
    return VQConfig(**values)


def smooth_images(n: int, size: int | tuple[int, int], channels: int = 1, seed: int = 0) -> torch.Tensor:
    """Random blurry images in [-1, 1] (low-res noise upsampled), a stand-in for a small domain."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, 4, 4, generator=g) * 2 - 1
    return F.interpolate(low, size=size, mode="bilinear", align_corners=False).clamp(-1, 1)
