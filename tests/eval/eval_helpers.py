"""Helpers shared by the evaluation tests."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from avgkit.eval.images import to_uint8_rgb


class Uint8Images(Dataset):
    """Images as torch-fidelity reads them: uint8 ``(3, H, W)`` items."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = to_uint8_rgb(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]
