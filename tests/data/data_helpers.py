"""Test doubles for the data tests, also runnable as a script for the crash test.

``python data_helpers.py STORE [--delay S] [--die-before-done CHUNK]`` runs
:func:`avgkit.data.prepare` on :class:`NoiseSource` with :class:`PatchMeanTokenizer`,
printing ``chunk <c>`` after each committed chunk so a parent process can kill it at a
chosen moment.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from avgkit.data.sources import SkippedImage
from avgkit.interfaces import Tokenizer

PREPARE_KW = {"batch_size": 8, "chunk_items": 16, "progress": False}


class PatchMeanTokenizer(Tokenizer):
    """Mean of each 2x2 patch (over channels) quantised into ``levels`` codes."""

    def __init__(self, image_size: int = 8, channels: int = 1, levels: int = 16, delay: float = 0.0) -> None:
        super().__init__()
        self.image_size, self.channels, self.codebook_size = image_size, channels, levels
        self.grid = (image_size // 2, image_size // 2)
        self.delay = delay

    def encode(self, images: Tensor) -> Tensor:
        if self.delay:
            time.sleep(self.delay)
        m = F.avg_pool2d(images.float().mean(1, keepdim=True), 2).clamp(-1, 1)
        return ((m + 1) / 2 * (self.codebook_size - 1)).round().long().flatten(1)

    def decode(self, codes: Tensor) -> Tensor:
        v = (codes.float() / (self.codebook_size - 1) * 2 - 1).view(-1, 1, *self.grid)
        return F.interpolate(v, scale_factor=2).expand(-1, self.channels, -1, -1)


class NoiseSource:
    """``n`` deterministic random images with labels ``i % num_classes``."""

    channels = 1

    def __init__(self, n: int = 200, image_size: int = 8, num_classes: int = 3, seed: int = 0) -> None:
        self.n, self.image_size, self.seed = n, image_size, seed
        self.class_names = [f"c{k}" for k in range(num_classes)]
        self.skipped: list[SkippedImage] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + index)
        img = torch.rand(1, self.image_size, self.image_size, generator=g) * 2 - 1
        return img, index % len(self.class_names)

    def item_path(self, index: int) -> str:
        return f"noise[{index}]"

    def describe(self) -> dict[str, Any]:
        return {"kind": "noise", "n": self.n, "seed": self.seed}

    def at_size(self, image_size: int) -> NoiseSource:
        return NoiseSource(self.n, image_size, len(self.class_names), self.seed)


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--die-before-done", type=int, default=None, help="SIGKILL after this chunk's codes")
    args = parser.parse_args()

    from avgkit.data import prepare, store

    if args.die_before_done is not None:
        # fsync is called twice per chunk: codes + labels, then done. Killing right after
        # the first call of the chosen chunk leaves its codes on disk but done unset.
        real_fsync = store._fsync_files
        calls = {"n": 0}

        def fsync_then_die(paths: Any) -> None:
            real_fsync(paths)
            calls["n"] += 1
            if calls["n"] == 2 * args.die_before_done + 1:
                os.kill(os.getpid(), signal.SIGKILL)

        store._fsync_files = fsync_then_die

    def on_chunk(c: int) -> None:
        print(f"chunk {c}", flush=True)

    prepare(NoiseSource(), PatchMeanTokenizer(delay=args.delay), args.store, on_chunk=on_chunk, **PREPARE_KW)
    print("finished", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    _main()
