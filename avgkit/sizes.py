"""Image sizes: an int ``S`` (a square ``S x S``) or ``[H, W]`` (height, width).

Every size option (a tokenizer's ``image_size``, ``data.image_size``, a source's size,
a code store's ``resolution``) takes either form. An int keeps meaning what it always
did; ``[S, S]`` is the same size as ``S`` (:func:`canonical_size` turns it into ``S``,
so a store or recipe written either way compares equal).

Imports nothing heavy: component configs use :data:`ImageSize` at registration time.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field

_Side = Annotated[int, Field(ge=1)]
#: a pydantic field type for image sizes: ``32`` or ``[32, 64]`` (a list comes back as a tuple)
ImageSize = _Side | tuple[_Side, _Side]


def image_hw(size: Any) -> tuple[int, int]:
    """``(H, W)`` of a size: ``32 -> (32, 32)``, ``[32, 64] -> (32, 64)``."""
    try:
        if any(isinstance(s, bool) for s in _sides(size)):
            raise TypeError
        h, w = (operator.index(s) for s in _sides(size))
    except TypeError:
        raise ValueError(f"an image size is an int or [height, width], not {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"image sides must be positive, got {size!r}")
    return int(h), int(w)


def _sides(size: Any) -> tuple[Any, Any]:
    if isinstance(size, Sequence) and not isinstance(size, str):
        if len(size) != 2:
            raise TypeError
        return size[0], size[1]
    return size, size


def canonical_size(size: Any) -> int | tuple[int, int]:
    """``S`` for a square (``[S, S]`` included), else ``(H, W)``."""
    h, w = image_hw(size)
    return h if h == w else (h, w)


def same_size(a: Any, b: Any) -> bool:
    return image_hw(a) == image_hw(b)


def size_text(size: Any) -> str:
    """A size in words: ``32`` for a square (as sizes have always been written), ``32x64`` (H x W) else."""
    h, w = image_hw(size)
    return str(h) if h == w else f"{h}x{w}"


def scaled_size(size: Any, scale: float) -> int | tuple[int, int]:
    """Each side times ``scale``, rounded down (augmentations load images larger, then crop)."""
    h, w = image_hw(size)
    return canonical_size((int(h * scale), int(w * scale)))


__all__ = ["ImageSize", "canonical_size", "image_hw", "same_size", "scaled_size", "size_text"]
