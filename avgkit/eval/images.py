"""Image sets for evaluation: folders of PNG/JPEG files, ``.npz`` batches, tensors.

Everything is handed to a feature extractor as ``uint8`` tensors ``(B, 3, H, W)``: the
form in which samples are saved, so metrics on a float tensor equal metrics on the PNG
files written from it. Large sets are streamed batch by batch (a 50,000-image npz does
not fit in memory comfortably).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from avgkit.eval.files import AvgkitError, sha256_files
from avgkit.io import atomic_write, sha256_file

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageSet",
    "open_images",
    "save_image_grid",
    "to_uint8_rgb",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def to_uint8_rgb(images: Tensor | np.ndarray) -> Tensor:
    """``(N, C, H, W)`` uint8, or float in ``[-1, 1]``, with C in {1, 3} -> uint8 RGB.

    Floats are quantised as when saving a PNG: ``round((x + 1) * 127.5)``, clamped.
    Grayscale is repeated to three channels.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise AvgkitError(
            f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}: "
            "move channels to dim 1 (channel-last arrays: .permute(0, 3, 1, 2))"
        )
    if images.dtype == torch.uint8:
        out = images
    elif images.is_floating_point():
        out = ((images.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    else:
        raise AvgkitError(f"images must be uint8 or float in [-1, 1], got {images.dtype}")
    if out.shape[1] == 1:
        out = out.expand(-1, 3, -1, -1)
    return out.contiguous()


@dataclass
class ImageSet:
    """A set of images that can be read in batches, with a content hash.

    ``kind`` is ``"folder"``, ``"npz"`` or ``"tensor"``; ``path`` is ``None`` for
    tensors. The hash is computed lazily (it reads every byte once).
    """

    kind: str
    size: int
    path: Path | None = None
    files: list[Path] = field(default_factory=list)
    tensor: Tensor | None = None
    _sha256: str | None = None

    def __len__(self) -> int:
        return self.size

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            if self.kind == "npz":
                assert self.path is not None
                self._sha256 = sha256_file(self.path)
            elif self.kind == "folder":
                assert self.path is not None
                self._sha256 = sha256_files(self.path, self.files)
            else:
                assert self.tensor is not None
                self._sha256 = _sha256_tensor(self.tensor)
        return self._sha256

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """uint8 RGB batches ``(B, 3, H, W)`` in a fixed order."""
        if self.kind == "tensor":
            assert self.tensor is not None
            for start in range(0, self.size, batch_size):
                yield to_uint8_rgb(self.tensor[start : start + batch_size])
        elif self.kind == "npz":
            assert self.path is not None
            yield from _npz_batches(self.path, batch_size)
        else:
            for start in range(0, self.size, batch_size):
                yield _read_files(self.files[start : start + batch_size])

    def take(self, count: int) -> Tensor:
        """The first ``count`` images as one uint8 batch (for sample grids)."""
        return next(self.batches(max(1, min(count, self.size))))


def open_images(source: str | Path | Tensor | np.ndarray | ImageSet) -> ImageSet:
    """An :class:`ImageSet` for a folder, an ``.npz`` (``arr_0``, N x H x W x 3) or a tensor."""
    if isinstance(source, ImageSet):
        return source
    if isinstance(source, (Tensor, np.ndarray)):
        tensor = torch.as_tensor(source)
        to_uint8_rgb(tensor[:1])  # validate shape and dtype now, not in the middle of a run
        return ImageSet("tensor", int(tensor.shape[0]), tensor=tensor)
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise AvgkitError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {path}: check the folder")
        return ImageSet("folder", len(files), path=path, files=files)
    if path.suffix == ".npz" and path.is_file():
        shape, _ = _npz_header(path)
        return ImageSet("npz", int(shape[0]), path=path)
    if not path.exists():
        raise AvgkitError(f"image source not found: {path}")
    raise AvgkitError(f"cannot read images from {path}: pass a folder of PNG/JPEG files or an .npz with arr_0")


def save_image_grid(images: Tensor | np.ndarray, path: str | Path, nrow: int | None = None, pad: int = 2) -> Path:
    """Write images (any form :func:`to_uint8_rgb` takes) as one PNG grid.

    ``nrow`` images per row; by default as many as make the grid square.
    """
    from avgkit.images import tile_grid

    cells = to_uint8_rgb(images).permute(0, 2, 3, 1).numpy()
    n = len(cells)
    ncol = min(nrow or math.ceil(math.sqrt(n)), n)
    rows = [list(range(start, min(start + ncol, n))) for start in range(0, n, ncol)]
    picture = Image.fromarray(tile_grid(cells, rows, pad=pad))
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def _sha256_tensor(tensor: Tensor) -> str:
    import hashlib

    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def _read_files(files: Sequence[Path]) -> Tensor:
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise AvgkitError(f"images in one set differ in size ({sorted(shapes)[:3]}...): resize them to one size first")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _npz_member(archive: zipfile.ZipFile, path: Path) -> str:
    if "arr_0.npy" not in archive.namelist():
        raise AvgkitError(f"{path} has no arr_0 array: expected an ADM-style batch (arr_0, N x H x W x 3 uint8)")
    return "arr_0.npy"


def _npz_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    with zipfile.ZipFile(path) as archive, archive.open(_npz_member(archive, path)) as handle:
        shape, dtype = _read_npy_header(handle)
    if len(shape) != 4 or shape[-1] not in (1, 3) or dtype != np.uint8:
        raise AvgkitError(f"{path}: arr_0 must be uint8 N x H x W x 3, got {dtype} {shape}")
    return shape, dtype


def _read_npy_header(handle) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    if fortran:
        raise AvgkitError("Fortran-ordered arr_0 is not supported: save the array with np.savez in C order")
    return shape, dtype


def _npz_batches(path: Path, batch_size: int) -> Iterator[Tensor]:
    """Stream arr_0 from the zip member without loading the whole array."""
    with zipfile.ZipFile(path) as archive, archive.open(_npz_member(archive, path)) as handle:
        shape, dtype = _read_npy_header(handle)
        per_image = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            count = min(batch_size, shape[0] - start)
            raw = handle.read(count * per_image)
            batch = np.frombuffer(raw, dtype=dtype).reshape(count, *shape[1:])
            yield to_uint8_rgb(torch.from_numpy(batch.copy()).permute(0, 3, 1, 2))
