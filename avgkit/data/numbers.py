"""The two-digit numbers demo: two real handwritten digits side by side, captioned in words.

Each image is 32x64 pixels: a scikit-learn digit for the tens on the left, one for the
units on the right, captioned "forty-two" (or "forty" for 40). The numbers run from 20
to 99; :data:`HELD_OUT` is never trained on, and each of its tens words and units words
appears in training, so the demo measures whether a model composes words it has seen
into numbers it has not.

The standalone demo (:mod:`avgkit.demos.text_digits`) encodes each 32x32 half with a
square tokenizer; :class:`SideBySide` lays the two ``h x w`` grids out as one ``h x 2w``
raster (row ``r`` = left row ``r``, then right row ``r``), the grid a tokenizer of the
whole 32x64 image has, and decodes it back.

:class:`TextDigitsSource` (``data.source: text-digits``) is the same data as an image
source for ``avgkit train``: whole ``S x 2S`` images, which a tokenizer of that size
(``image_size: [32, 64]``) encodes as one grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from avgkit.data.sources import InMemorySource, SkippedImage, load_digits_images
from avgkit.errors import AvgkitError
from avgkit.interfaces import Tokenizer
from avgkit.sizes import image_hw

UNITS = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
NUMBERS = list(range(20, 100))
#: never trained on; every tens and units word of these appears in the training captions
HELD_OUT = (23, 37, 41, 56, 64, 78, 85, 92)
TRAIN_NUMBERS = [n for n in NUMBERS if n not in HELD_OUT]


def number_words(n: int) -> str:
    """``42 -> "forty-two"``, ``40 -> "forty"`` (20..99)."""
    if not 20 <= n <= 99:
        raise ValueError(f"the numbers demo spells 20..99, not {n}")
    tens, units = divmod(n, 10)
    return TENS[tens] + (f"-{UNITS[units]}" if units else "")


def words_number(caption: str) -> int | None:
    """The inverse of :func:`number_words` (``None`` for anything else)."""
    table = {number_words(n): n for n in NUMBERS}
    return table.get(caption.strip().lower())


def check_held_out_words() -> None:
    """Every held-out number's words appear in the training captions (a demo invariant)."""
    seen = {w for n in TRAIN_NUMBERS for w in number_words(n).split("-")}
    for n in HELD_OUT:
        missing = [w for w in number_words(n).split("-") if w not in seen]
        if missing:
            raise AssertionError(f"held-out {n} uses words never trained on: {missing}")


def side_by_side(left: Tensor, right: Tensor, grid: tuple[int, int]) -> Tensor:
    """Two ``(B, h*w)`` raster codes -> ``(B, h*2w)`` raster codes of the joined grid."""
    h, w = grid
    return torch.cat([left.view(-1, h, w), right.view(-1, h, w)], 2).reshape(len(left), h * 2 * w)


def split_sides(codes: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    h, w = grid
    joined = codes.view(-1, h, 2 * w)
    return joined[..., :w].reshape(-1, h * w), joined[..., w:].reshape(-1, h * w)


class SideBySide(Tokenizer):
    """A tokenizer applied to the two halves of an ``(H, 2W)`` image: an ``(h, 2w)`` grid."""

    def __init__(self, inner: Tokenizer) -> None:
        super().__init__()
        self.inner = inner
        self.codebook_size = inner.codebook_size
        self.grid = (inner.grid[0], 2 * inner.grid[1])
        h, w = inner.image_hw
        self.image_size = (h, 2 * w)
        self.channels = inner.channels

    def encode(self, images: Tensor) -> Tensor:
        h, w = self.image_hw
        if tuple(images.shape[-2:]) != (h, w):
            raise ValueError(f"side-by-side images must be {h}x{w}, got {tuple(images.shape[-2:])}")
        half = w // 2
        return side_by_side(self.inner.encode(images[..., :half]), self.inner.encode(images[..., half:]),
                            self.inner.grid)

    def decode(self, codes: Tensor) -> Tensor:
        left, right = split_sides(codes, self.inner.grid)
        return torch.cat([self.inner.decode(left), self.inner.decode(right)], -1)


def make_pairs(labels: Tensor, numbers: Sequence[int], per_number: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """For each number, ``per_number`` random (tens image, units image) index pairs of a digit pool.

    Returns ``(left indices, right indices, number)`` over ``len(numbers) * per_number`` items.
    """
    gen = torch.Generator().manual_seed(seed)
    by_digit = [torch.nonzero(labels == d).flatten() for d in range(10)]
    left, right, which = [], [], []
    for n in numbers:
        t, u = divmod(n, 10)
        left.append(by_digit[t][torch.randint(len(by_digit[t]), (per_number,), generator=gen)])
        right.append(by_digit[u][torch.randint(len(by_digit[u]), (per_number,), generator=gen)])
        which.append(torch.full((per_number,), n))
    return torch.cat(left), torch.cat(right), torch.cat(which)


def number_images(images: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """``(N, C, H, 2W)`` images from a digit pool ``(M, C, H, W)`` and index pairs."""
    return torch.cat([images[left], images[right]], -1)


def halves_correct(classifier: object, images: Tensor, numbers: Tensor) -> Tensor:
    """``(N,)`` bool: the digit classifier reads both halves of each image as its number's digits.

    ``images``: ``(N, C, S, 2S)``, the tens digit in the left ``S x S`` half, the units in
    the right one (:class:`TextDigitsSource`'s layout, and the demo's).
    """
    s = images.shape[-2]
    if images.shape[-1] != 2 * s:
        raise ValueError(f"two-digit images are two squares side by side (S x 2S), got "
                         f"{images.shape[-2]}x{images.shape[-1]}")
    tens = torch.as_tensor(classifier.predict(images[..., :s]))  # type: ignore[attr-defined]
    units = torch.as_tensor(classifier.predict(images[..., s:]))  # type: ignore[attr-defined]
    return (tens == numbers // 10) & (units == numbers % 10)


#: ``data.source`` name of :class:`TextDigitsSource`
TEXT_DIGITS = "text-digits"
#: images per training number in each split of :class:`TextDigitsSource`: random (tens, units)
#: pairs of the split's digits. With 48 a model learned the pairs by heart (its validation
#: loss rose from the first epochs on) instead of drawing the two digits apart.
PER_NUMBER = {"train": 400, "test": 4}
#: how :class:`TextDigitsSource` draws a number (recorded, so a store of another layout is refused)
LAYOUT = "side-by-side"
#: the size of the ``text-digits`` recipe's images: two 32x32 digits side by side
TEXT_DIGITS_SIZE = (32, 64)


class TextDigitsSource(InMemorySource):
    """The training numbers as a captioned source: ``(1, S, 2S)`` images, labels are caption ids.

    The tens digit fills the left ``S x S`` half, the units digit the right one, each
    drawn from its 8x8 scikit-learn digit exactly as :class:`~avgkit.data.sources.DigitsSource`
    draws one digit at ``S``. A tokenizer of the whole image (``image_size: [S, 2S]``)
    gives each digit half of its grid.

    Split ``train`` pairs the scikit-learn training digits, ``test`` the held-out ones
    (the same captions, so its labels share the training ids). :data:`HELD_OUT` numbers
    are in neither: they are for sampling by prompt.
    """

    channels = 1
    kind = TEXT_DIGITS

    def __init__(self, image_size: int | tuple[int, int] = TEXT_DIGITS_SIZE, split: str = "train") -> None:
        h, w = image_hw(image_size)
        if w != 2 * h:
            raise AvgkitError(
                f"text-digits images are two square digits side by side, S x 2S pixels, not {h}x{w}; "
                f"set the tokenizer's image_size to [{h}, {2 * h}] (the text-digits recipe: [32, 64])"
            )
        if split not in PER_NUMBER:
            raise ValueError(f"text-digits has the splits {', '.join(PER_NUMBER)}, not {split!r}")
        self.image_size, self.split = (h, w), split
        self.class_names = sorted(number_words(n) for n in TRAIN_NUMBERS)
        digits, labels = load_digits_images(h, split)
        left, right, numbers = make_pairs(labels, TRAIN_NUMBERS, PER_NUMBER[split], seed=0)
        self.images = number_images(digits, left, right)
        ids = {c: i for i, c in enumerate(self.class_names)}
        self.labels = torch.as_tensor([ids[number_words(int(n))] for n in numbers])
        self.skipped: list[SkippedImage] = []

    def describe(self) -> dict[str, Any]:
        return {"kind": TEXT_DIGITS, "layout": LAYOUT, "split": self.split, "num_items": len(self),
                "held_out": list(HELD_OUT)}

    def at_size(self, image_size: int | tuple[int, int]) -> TextDigitsSource:
        return TextDigitsSource(image_size, self.split)


__all__ = [
    "HELD_OUT", "LAYOUT", "NUMBERS", "PER_NUMBER", "TEXT_DIGITS", "TEXT_DIGITS_SIZE", "TRAIN_NUMBERS", "SideBySide",
    "TextDigitsSource", "check_held_out_words", "halves_correct", "make_pairs", "number_images", "number_words",
    "side_by_side", "split_sides", "words_number",
]
