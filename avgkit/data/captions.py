"""Captioned data: an ImageFolder tree with a captions file, and caption ids -> condition batches.

Layout::

    root/
      captions.jsonl        one JSON object a line: {"path": "a/0001.png", "caption": "a red bird"}
      a/0001.png ...        images anywhere under root (paths relative to it)

A captioned source numbers its distinct captions (sorted) and gives each image the id
of its caption as its label, so the code store, the loader and the training loop carry
caption ids exactly as they carry class ids; the store's ``class_names`` are the
captions. :class:`CaptionTable` turns caption ids into what a text conditioner takes:
its own token ids, or features a frozen encoder computed once (``-1`` is the null
condition, what condition dropout gives).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from avgkit.conditions import Conditions
from avgkit.data.sources import SkippedImage, _SourceBase, read_image
from avgkit.errors import AvgkitError
from avgkit.sizes import canonical_size

CAPTIONS_FILE = "captions.jsonl"


def read_captions(root: str | Path, file: str | Path | None = None) -> list[tuple[str, str]]:
    """``(relative path, caption)`` pairs of a captions JSONL file (default ``root/captions.jsonl``)."""
    path = Path(file) if file is not None else Path(root) / CAPTIONS_FILE
    if not path.is_file():
        raise AvgkitError(f"captions file {path} not found; write one JSON object a line with keys path and caption")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            pairs.append((str(item["path"]), str(item["caption"])))
        except (ValueError, KeyError, TypeError):
            raise AvgkitError(f"{path} line {n} is not a JSON object with keys path and caption; fix or remove "
                              f"that line") from None
    if not pairs:
        raise AvgkitError(f"captions file {path} holds no captions; add lines like {{\"path\": ..., \"caption\": ...}}")
    return pairs


def has_captions(root: str | Path) -> bool:
    """Whether ``root`` is a captioned image folder (it holds a captions file)."""
    return (Path(root) / CAPTIONS_FILE).is_file()


#: ``describe()`` kinds of the sources whose labels are caption ids
CAPTIONED_KINDS = ("captioned-folder", "text-digits")


def is_captioned(description: dict[str, Any]) -> bool:
    """Whether a source (by its ``describe()``, as a code store records it) labels images by caption."""
    return description.get("kind") in CAPTIONED_KINDS


def takes_captions(conditioner: Any) -> bool:
    """Whether a conditioner is conditioned on text: its labels are caption ids, not class ids."""
    return "class" not in getattr(conditioner, "condition_kinds", ("class",))


class CaptionedFolder(_SourceBase):
    """Images of an ImageFolder tree named by a captions file; labels are caption ids.

    Items follow the captions file's order. Images are read like an ImageFolder's (short
    side resized, center cropped); :meth:`describe` fingerprints the (path, caption)
    listing, so a changed captions file is a different source.
    """

    def __init__(self, root: str | Path, image_size: int | tuple[int, int], channels: int = 3,
                 captions: str | Path | None = None):
        if channels not in (1, 3):
            raise AvgkitError(f"images can be read with 1 (grey) or 3 (RGB) channels, not {channels}")
        self.root = Path(root).expanduser().resolve()
        self.pairs = read_captions(self.root, captions)
        self.class_names = sorted({c for _, c in self.pairs})
        ids = {c: i for i, c in enumerate(self.class_names)}
        self.labels = [ids[c] for _, c in self.pairs]
        self.image_size, self.channels = canonical_size(image_size), channels
        self.skipped: list[SkippedImage] = []
        missing = [p for p, _ in self.pairs if not (self.root / p).is_file()]
        if missing:
            raise AvgkitError(f"{len(missing)} captioned images are missing under {self.root} (first: {missing[0]}); "
                              f"fix the paths in the captions file")

    def __len__(self) -> int:
        return len(self.pairs)

    def item_path(self, index: int) -> str:
        return str(self.root / self.pairs[index][0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return read_image(self.item_path(index), self.channels, self.image_size), self.labels[index]

    def describe(self) -> dict[str, Any]:
        listing = hashlib.sha256("\n".join(f"{p}\t{c}" for p, c in self.pairs).encode()).hexdigest()
        return {"kind": "captioned-folder", "root": str(self.root), "num_items": len(self),
                "captions": len(self.class_names), "listing_sha256": listing,
                **({"channels": self.channels} if self.channels != 3 else {})}

    def at_size(self, image_size: int | tuple[int, int]) -> CaptionedFolder:
        other = object.__new__(CaptionedFolder)
        other.__dict__.update(self.__dict__)
        other.image_size = canonical_size(image_size)
        other.skipped = []
        return other


class CaptionTable:
    """Caption ids ``(B,)`` -> :class:`Conditions` (``-1``: the null condition).

    Tokenized once by ``conditioner.tokenize``; with ``features`` ``(C, T, E)`` and
    ``mask`` ``(C, T)`` (a frozen encoder's output, extracted once) it hands out
    embeddings instead of token ids; with ``stored`` (the code store's
    :class:`avgkit.data.features.CaptionFeatures`, too large to hold in memory) it reads
    each batch's rows from disk.
    """

    def __init__(self, captions: Sequence[str], conditioner: Any = None, *, features: Tensor | None = None,
                 mask: Tensor | None = None, stored: Any = None) -> None:
        self.captions = list(captions)
        self.stored = stored
        if stored is not None:
            if len(stored) != len(self.captions):
                raise AvgkitError(f"the stored caption features hold {len(stored)} rows for {len(self.captions)} "
                                  f"captions; extract them again")
        elif features is not None:
            if mask is None or len(features) != len(self.captions):
                raise AvgkitError(f"caption features hold {len(features)} rows for {len(self.captions)} captions; "
                                  f"extract them again")
            self.table = Conditions.embeddings(features, mask)
        elif conditioner is not None:
            self.table = conditioner.tokenize(self.captions)
        else:
            raise AvgkitError("a caption table needs the conditioner (to tokenize) or precomputed features")

    def __len__(self) -> int:
        return len(self.captions)

    def __call__(self, ids: Tensor) -> Conditions:
        ids = ids.cpu()
        if len(ids) and int(ids.max()) >= len(self.captions):
            raise AvgkitError(f"caption id {int(ids.max())} is past the {len(self.captions)} captions of this data; "
                              f"was the code store made from other captions?")
        if self.stored is not None:
            values, mask = self.stored.read(ids.clamp(min=0).numpy())
            return Conditions.embeddings(values, mask).with_null(ids < 0)
        rows = self.table.index_select(0, ids.clamp(min=0))
        return rows.with_null(ids < 0)


__all__ = ["CAPTIONS_FILE", "CaptionTable", "CaptionedFolder", "has_captions", "is_captioned", "read_captions", "takes_captions"]
