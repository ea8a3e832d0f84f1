"""Options of the text conditioner (importable without torch models or transformers)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from avgkit.registry import ConditionerConfig


class TextConditionerConfig(ConditionerConfig):
    # captions, not class ids, are the conditions: a run needs no class count
    num_classes: int = Field(0, ge=0, description="unused (the conditions are captions); leave at 0")
    encoder: Literal["words", "bytes", "t5", "clip"] = Field(
        "words", description="words or bytes: a small trainable encoder; t5 or clip: a frozen pretrained one at path")
    path: str | None = Field(None, description="local folder of the pretrained encoder and its tokenizer (t5, clip)")
    feature_dtype: Literal["float32", "float16"] = Field(
        "float32", description="t5 / clip: how the features extracted into the code store are kept (float16: half "
                               "the disk, rounded)")
    max_length: int = Field(32, ge=1, description="longest caption, in tokens; longer ones are cut")
    vocab_size: int = Field(2048, ge=2, description="words: hash buckets of the word table (0 is padding)")
    width: int | None = Field(None, ge=8, description="trainable encoder width; default the backbone's dim")
    layers: int = Field(2, ge=0, description="trainable encoder: transformer layers")
    heads: int = Field(4, ge=1, description="trainable encoder: attention heads")
    modulation: Literal["single", "none"] = Field(
        "single", description="adaLN-single modulation of every block from the pooled caption, or none (prefix only)")
    embed_std: float = Field(0.02, gt=0, description="init std of the token and position tables")
