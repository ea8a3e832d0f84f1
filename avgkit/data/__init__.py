"""Pre-tokenized datasets: image sources, the zarr code store, extraction, loading.

Typical use::

    from avgkit.data import DigitsSource, prepare, CodeDataset, CodeLoader

    report = prepare(DigitsSource(32), tokenizer, "data/digits.zarr", batch_size=256)
    loader = CodeLoader(CodeDataset("data/digits.zarr"), batch_size=64, seed=0)
    for codes, labels in loader:  # (B, T) int64, (B,) int64
        ...
"""

from avgkit.data.loader import CodeBatch, CodeDataset, CodeLoader, EpochSampler
from avgkit.data.prepare import PrepareReport, prepare
from avgkit.data.sources import (
    AUGMENTATIONS,
    Augmentation,
    DigitsSource,
    ImageFolderSource,
    ImageSource,
    SkippedImage,
    UnreadableImageError,
    get_augmentation,
    load_digits_images,
    ten_crop,
)
from avgkit.data.store import (
    CodeStore,
    IncompatibleStoreError,
    IncompleteStoreError,
    MissingChunkError,
    StoreError,
    StoreMeta,
    weights_id,
)

__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "CodeBatch",
    "CodeDataset",
    "CodeLoader",
    "CodeStore",
    "DigitsSource",
    "EpochSampler",
    "ImageFolderSource",
    "ImageSource",
    "IncompatibleStoreError",
    "IncompleteStoreError",
    "MissingChunkError",
    "PrepareReport",
    "SkippedImage",
    "StoreError",
    "StoreMeta",
    "UnreadableImageError",
    "get_augmentation",
    "load_digits_images",
    "prepare",
    "ten_crop",
    "weights_id",
]
