"""LlamaGen-style decoder-only transformer backbone for avgkit."""

from avgkit_transformer.config import PRESETS, TransformerConfig

__all__ = ["PRESETS", "KVCacheState", "TransformerBackbone", "TransformerConfig"]


def __getattr__(name: str):  # the model (torch) loads on first use: `avgkit --help` stays light
    if name in ("KVCacheState", "TransformerBackbone"):
        from avgkit_transformer import model

        return getattr(model, name)
    raise AttributeError(f"module 'avgkit_transformer' has no attribute {name!r}")
