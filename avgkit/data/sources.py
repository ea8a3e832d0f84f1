"""Image sources for code extraction: stable integer indices, images in ``[-1, 1]``.

A source is random access (``source[i] -> (image, label)``) so that extraction can skip
finished items and decode images in parallel workers. ``iter(source)`` yields
``(index, image, label)`` and records unreadable files in ``source.skipped`` instead of
dropping them silently.

Sources that ship with the core:

* :class:`ImageFolderSource`: the ImageNet layout (one sub-folder per class, folder
  names sorted to label ids), RGB, short side resized then center cropped.
* :class:`avgkit.data.captions.CaptionedFolder`: an image folder with a ``captions.jsonl``;
  labels are caption ids (for text conditioners).
* :class:`DigitsSource`: scikit-learn's 8x8 digits, upsampled (no download needed).
* :class:`avgkit.data.numbers.TextDigitsSource`: two-digit numbers captioned in words.

Augmentation (:func:`get_augmentation`) turns one loaded image into ``A`` views:
``none`` (1), ``flip`` (image + mirror, 2) or ``tencrop`` (LlamaGen's scheme, 10).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avgkit.errors import AvgkitError
from avgkit.sizes import canonical_size, image_hw, scaled_size, size_text

#: File suffixes treated as images (case-insensitive); other files are ignored.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp"})


class UnreadableImageError(AvgkitError):
    """An image file that cannot be decoded; carries the path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class SkippedImage:
    """An item that was left out of the codes, with why."""

    index: int
    path: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "path": self.path, "reason": self.reason}


@runtime_checkable
class ImageSource(Protocol):
    """What extraction needs from a source of labelled images."""

    #: ``S`` (square) or ``(H, W)``, see :mod:`avgkit.sizes`
    image_size: int | tuple[int, int]
    channels: int
    class_names: list[str]
    skipped: list[SkippedImage]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """``(image (C, H, W) float32 in [-1, 1], label)``; raises UnreadableImageError."""
        ...

    def item_path(self, index: int) -> str:
        """A human-readable location of item ``index`` (file path or ``digits[i]``)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the source; equal descriptions mean equal items."""
        ...

    def at_size(self, image_size: int | tuple[int, int]) -> ImageSource:
        """The same items loaded at another size (augmentations crop larger)."""
        ...


class _SourceBase:
    """Shared iteration with skip bookkeeping."""

    skipped: list[SkippedImage]

    def __iter__(self) -> Iterator[tuple[int, Tensor, int]]:
        for i in range(len(self)):  # type: ignore[arg-type]
            try:
                image, label = self[i]  # type: ignore[index]
            except UnreadableImageError as e:
                self.skipped.append(SkippedImage(i, e.path, e.reason))
                continue
            yield i, image, label


class InMemorySource(_SourceBase):
    """A source whose images are one tensor already in memory (the built-in digit sources).

    Subclasses set ``images`` (N, C, H, W), ``labels`` (N,), ``split`` and ``kind`` (the
    name items are reported under).
    """

    kind: str
    split: str
    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def item_path(self, index: int) -> str:
        return f"{self.kind}[{self.split}][{index}]"


# --------------------------------------------------------------------------- resizing
def center_crop_pil(image: Any, size: int | tuple[int, int]) -> Any:
    """Resize the image to cover ``size`` and crop its center (ADM's recipe).

    ``size`` is ``S`` (the short side goes to ``S``, then the center square) or ``(H, W)``
    (the image is scaled, keeping its aspect, until it covers ``H x W``, then the center
    ``H x W``). Halving with a box filter first keeps large downscales alias-free, then
    one bicubic resize lands the covering side exactly on its target.
    """
    from PIL import Image

    h, w = image_hw(size)
    while image.size[0] >= 2 * w and image.size[1] >= 2 * h:
        image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.Resampling.BOX)
    scale = max(w / image.size[0], h / image.size[1])
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.Resampling.BICUBIC)
    left = (image.size[0] - w) // 2
    top = (image.size[1] - h) // 2
    return image.crop((left, top, left + w, top + h))


def pil_to_tensor(image: Any) -> Tensor:
    """PIL image -> ``(C, H, W)`` float32 in ``[-1, 1]``."""
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()
    return t / 127.5 - 1.0


def read_image(path: str, channels: int, image_size: int | tuple[int, int]) -> Tensor:
    """One image file as ``(C, H, W)`` in ``[-1, 1]``, center-cropped; any decode failure is
    an :class:`UnreadableImageError` naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as f:
            # also forces a full decode, surfacing truncation
            im = f.convert("RGB" if channels == 3 else "L")
        return pil_to_tensor(center_crop_pil(im, image_size))
    except Exception as e:  # noqa: BLE001 - any decode failure is the same to us
        raise UnreadableImageError(path, f"{type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------- image folder
def _list_image_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise AvgkitError(f"no class folders in {root}; expected <root>/<class name>/<image files>")
    items: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        files: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, root)
            files.extend(
                os.path.join(rel, f)
                for f in filenames
                if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES
            )
        items.extend((f, label) for f in sorted(files))
    if not items:
        raise AvgkitError(f"no image files under {root}; supported suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}")
    return classes, items


class ImageFolderSource(_SourceBase):
    """``root/<class>/**/<image>``; labels follow the sorted class folder names.

    Item ``i`` is the ``i``-th file in (class, relative path) order, so indices stay
    stable as long as the folder does; :meth:`describe` fingerprints the listing so a
    changed folder is detected when resuming extraction.
    """

    def __init__(self, root: str | os.PathLike[str], image_size: int | tuple[int, int], channels: int = 3) -> None:
        if channels not in (1, 3):
            raise AvgkitError(f"images can be read with 1 (grey) or 3 (RGB) channels, not {channels}")
        self.channels = channels
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise AvgkitError(f"image folder {self.root} does not exist; pass the root of an ImageNet-style tree")
        self.image_size = canonical_size(image_size)
        self.class_names, self._items = _list_image_folder(self.root)
        self.skipped: list[SkippedImage] = []

    def __len__(self) -> int:
        return len(self._items)

    def item_path(self, index: int) -> str:
        return str(self.root / self._items[index][0])

    def label(self, index: int) -> int:
        return self._items[index][1]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return read_image(self.item_path(index), self.channels, self.image_size), self._items[index][1]

    def describe(self) -> dict[str, Any]:
        listing = hashlib.sha256("\n".join(f"{p}\t{c}" for p, c in self._items).encode()).hexdigest()
        return {
            "kind": "imagefolder",
            "root": str(self.root),
            "num_items": len(self),
            "num_classes": len(self.class_names),
            "listing_sha256": listing,
            **({"channels": self.channels} if self.channels != 3 else {}),
        }

    def at_size(self, image_size: int | tuple[int, int]) -> ImageFolderSource:
        other = object.__new__(ImageFolderSource)
        other.__dict__.update(self.__dict__)
        other.image_size = canonical_size(image_size)
        other.skipped = []
        return other


# --------------------------------------------------------------------------- digits
DIGITS_TEST_EVERY = 5


def _digits_split_mask(n: int, split: str) -> np.ndarray:
    test = np.arange(n) % DIGITS_TEST_EVERY == DIGITS_TEST_EVERY - 1
    if split == "train":
        return ~test
    if split == "test":
        return test
    if split == "all":
        return np.ones(n, dtype=bool)
    raise AvgkitError(f"unknown digits split {split!r}; choose from: train, test, all")


def load_digits_images(size: int | tuple[int, int] = 32, split: str = "train") -> tuple[Tensor, Tensor]:
    """scikit-learn's handwritten digits as ``(N, 1, H, W)`` float32 in ``[-1, 1]`` (``size``: S or (H, W)).

    The 8x8 images (values 0..16) are scaled to ``[-1, 1]`` and bilinearly resized.
    Every 5th image (index 4, 9, 14, ...) is held out as ``"test"`` (359 images); the
    other 1438 are ``"train"``; ``"all"`` keeps the original order.
    Returns ``(images, labels int64)``.
    """
    from sklearn.datasets import load_digits

    _digits_split_mask(0, split)  # fail on a bad split name before loading anything
    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float32)  # (1797, 8, 8)
    mask = _digits_split_mask(len(raw), split)
    x = torch.from_numpy(raw[mask]).unsqueeze(1) / 8.0 - 1.0
    if image_hw(size) != (8, 8):
        x = F.interpolate(x, size=image_hw(size), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64)[mask])
    return x.clamp_(-1.0, 1.0).contiguous(), labels


class DigitsSource(InMemorySource):
    """The built-in digits as a source (one channel, classes ``"0"``..``"9"``)."""

    channels = 1
    kind = "digits"

    def __init__(self, image_size: int | tuple[int, int] = 32, split: str = "train") -> None:
        self.image_size = canonical_size(image_size)
        self.split = split
        self.images, self.labels = load_digits_images(self.image_size, split)
        self.class_names = [str(d) for d in range(10)]
        self.skipped: list[SkippedImage] = []

    def describe(self) -> dict[str, Any]:
        return {"kind": "digits", "split": self.split, "num_items": len(self), "test_every": DIGITS_TEST_EVERY}

    def at_size(self, image_size: int | tuple[int, int]) -> DigitsSource:
        return DigitsSource(image_size, self.split)


# --------------------------------------------------------------------------- a recipe's data.source
#: the name of the built-in source in ``data.source``
BUILTIN_DIGITS = "digits"


def open_source(source: str, image_size: int | tuple[int, int], channels: int = 3,
                split: str = "train") -> ImageSource:
    """``data.source`` at ``image_size``: the built-in digits or text-digits (``split`` train or test), a
    captioned folder (one holding ``captions.jsonl``: labels are caption ids) or an ImageFolder root,
    read with the tokenizer's ``channels`` (grey or RGB)."""
    from avgkit.data.captions import CaptionedFolder, has_captions
    from avgkit.data.numbers import TEXT_DIGITS, TextDigitsSource

    if source == BUILTIN_DIGITS:
        return DigitsSource(image_size, split)
    if source == TEXT_DIGITS:
        return TextDigitsSource(image_size, split)
    if has_captions(source):
        return CaptionedFolder(source, image_size, channels)
    return ImageFolderSource(source, image_size, channels)


def held_out_source(source: str, image_size: int | tuple[int, int], channels: int = 3) -> ImageSource | None:
    """Images ``source`` keeps out of training, when it has such a split (the built-in sources' test split)."""
    from avgkit.data.numbers import TEXT_DIGITS

    return open_source(source, image_size, channels, "test") if source in (BUILTIN_DIGITS, TEXT_DIGITS) else None


def held_out_name(source: str) -> str | None:
    """What :func:`held_out_source` holds, in words (``None`` when there is none)."""
    from avgkit.data.numbers import TEXT_DIGITS

    if source == TEXT_DIGITS:
        return "the training numbers drawn with the digits the training split leaves out"
    return "the digits the training split leaves out" if source == BUILTIN_DIGITS else None


def source_images(source: ImageSource) -> tuple[Tensor, Tensor]:
    """Every readable image of a source as one tensor, with its labels (small data sets only)."""
    images, labels = [], []
    for _, image, label in source:
        images.append(image)
        labels.append(label)
    if not images:
        raise AvgkitError("the data source holds no readable images; check data.source")
    return torch.stack(images), torch.as_tensor(labels, dtype=torch.int64)


def describe_recorded(recorded: dict[str, Any]) -> str:
    """A source's recorded description (``describe()``) in words."""
    if recorded.get("kind") == "digits":
        return "the built-in digits"
    if recorded.get("kind") == "text-digits":
        from avgkit.data.numbers import LAYOUT

        return "the built-in text-digits" + ("" if recorded.get("layout") == LAYOUT else " of an earlier layout")
    return str(recorded.get("root", recorded))


def is_same_source(recorded: dict[str, Any], source: str, image_size: int | tuple[int, int],
                   channels: int = 3) -> bool:
    """Whether ``data.source`` names the source a store recorded (an image folder moved with its files counts)."""
    from avgkit.data.numbers import TEXT_DIGITS

    if source == TEXT_DIGITS:
        from avgkit.data.numbers import LAYOUT

        return recorded.get("kind") == source and recorded.get("layout") == LAYOUT
    if source == BUILTIN_DIGITS:
        return recorded.get("kind") == source
    from avgkit.data.captions import has_captions

    kind = "captioned-folder" if has_captions(source) else "imagefolder"
    if recorded.get("kind") != kind:
        return False
    if recorded.get("root") == source or Path(recorded.get("root", "")).resolve() == Path(source).resolve():
        return True
    if Path(source).is_dir():  # the same files, moved
        return open_source(source, image_size, channels).describe().get("listing_sha256") == recorded.get("listing_sha256")
    return False


# --------------------------------------------------------------------------- augmentation
def five_crop_boxes(size: int | tuple[int, int], crop: int | tuple[int, int]) -> list[tuple[int, int]]:
    """``(top, left)`` of the corner and center crops: tl, tr, bl, br, center.

    Sizes are ``S`` or ``(H, W)``. The center offset rounds half to even, as
    torchvision's ``five_crop`` does.
    """
    (h, w), (ch, cw) = image_hw(size), image_hw(crop)
    far_y, far_x = h - ch, w - cw
    mid_y, mid_x = int(round(far_y / 2.0)), int(round(far_x / 2.0))
    return [(0, 0), (0, far_x), (far_y, 0), (far_y, far_x), (mid_y, mid_x)]


def ten_crop(image: Tensor, crop: int | tuple[int, int]) -> Tensor:
    """``(C, H, W)`` -> ``(10, C, h, w)`` for ``crop`` ``(h, w)`` (or ``S``): five crops, then the
    same five boxes of the mirrored image (the order of torchvision's ``TenCrop``, which
    LlamaGen uses)."""
    c, h, w = image.shape
    ch, cw = image_hw(crop)
    if h < ch or w < cw:
        raise AvgkitError(f"ten-crop needs an image of at least {size_text(crop)}, got {h}x{w}")
    views: list[Tensor] = []
    for img in (image, image.flip(-1)):
        views.extend(img[:, top : top + ch, left : left + cw] for top, left in five_crop_boxes((h, w), crop))
    return torch.stack(views)


@dataclass(frozen=True)
class Augmentation:
    """How one source image becomes ``num_views`` tokenizer inputs.

    ``load_scale``: the source is loaded at ``int(side * load_scale)`` for each side.
    """

    name: str
    num_views: int
    load_scale: float = 1.0
    description: str = field(default="", compare=False)

    def load_size(self, image_size: int | tuple[int, int]) -> int | tuple[int, int]:
        return scaled_size(image_size, self.load_scale)

    def __call__(self, image: Tensor, image_size: int | tuple[int, int]) -> Tensor:
        """``(C, ...)`` at :meth:`load_size` -> ``(num_views, C, H, W)`` at ``image_size``."""
        if self.name == "none":
            return image.unsqueeze(0)
        if self.name == "flip":
            return torch.stack([image, image.flip(-1)])
        return ten_crop(image, image_size)


AUGMENTATIONS: dict[str, Augmentation] = {
    "none": Augmentation("none", 1, 1.0, "the image as is"),
    "flip": Augmentation("flip", 2, 1.0, "the image and its mirror"),
    "tencrop": Augmentation("tencrop", 10, 1.1, "center crop at 1.1x, then 4 corner + center crops and their mirrors"),
}
_ALIASES = {"ten-crop": "tencrop", "ten_crop": "tencrop", None: "none"}


def get_augmentation(name: str | None) -> Augmentation:
    """Look up ``none``, ``flip`` or ``tencrop`` (``ten-crop`` also accepted)."""
    key = _ALIASES.get(name, name)
    if key not in AUGMENTATIONS:
        raise AvgkitError(f"unknown augmentation {name!r}; choose from: {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[key]


__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "DigitsSource",
    "ImageFolderSource",
    "ImageSource",
    "SkippedImage",
    "UnreadableImageError",
    "center_crop_pil",
    "five_crop_boxes",
    "get_augmentation",
    "load_digits_images",
    "ten_crop",
]
