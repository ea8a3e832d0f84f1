"""Named tokenizer sizes and the factory that builds (and optionally loads) one.

* ``vq-16``: LlamaGen VQ-16 at 256 px (16x16 grid, 16384 codes), the AiM tokenizer;
  its official weights are ``vq_ds16_c2i.pt``.
* ``vq-8``: LlamaGen VQ-8 at 256 px (32x32 grid).
* ``digits``: a small grayscale tokenizer for scikit-learn's 8x8 digits upsampled to
  32 px: 8x downsampling to a 4x4 grid of 16 tokens over 512 codes of 4 dimensions
  (4-d codes keep nearly the whole codebook in use after a short run). With the
  ``digits`` training preset it trains in about 35 s on one CPU core, and an SVM
  trained on real digits reads ~99% of its held-out reconstructions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import VQConfig
from .errors import VQError

if TYPE_CHECKING:  # the model (torch) is imported when a tokenizer is built
    from .vq_model import LlamaGenVQ

__all__ = ["PRESETS", "VQConfig", "build_tokenizer", "preset"]

PRESETS: dict[str, dict[str, Any]] = {
    "vq-16": {},
    "vq-8": {"ch_mult": (1, 2, 2, 4)},
    "digits": {
        "image_size": 32,
        "channels": 1,
        "ch": 16,
        "ch_mult": (1, 1, 2, 2),
        "num_res_blocks": 1,
        "z_channels": 64,
        "codebook_size": 512,
        "codebook_dim": 4,
        "norm_groups": 8,
    },
}


def preset(name: str, **overrides: Any) -> VQConfig:
    """The config of preset ``name`` with ``overrides`` applied (validated)."""
    if name not in PRESETS:
        raise VQError(f"unknown LlamaGen VQ preset {name!r}; choose from {', '.join(PRESETS)}")
    return VQConfig(**{**PRESETS[name], **overrides})


def build_tokenizer(config: VQConfig) -> LlamaGenVQ:
    """Registry factory: build the tokenizer and load ``config.weights`` when set (eval mode)."""
    from .vq_model import LlamaGenVQ

    model = LlamaGenVQ(config)
    # on the meta device (dry runs, validation) nothing is read
    if config.weights and not next(model.parameters()).is_meta:
        from .loading import load_weights

        load_weights(model, config.weights)
    return model.eval()
