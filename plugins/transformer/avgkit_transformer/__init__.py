"""LlamaGen-style decoder-only transformer backbone for avgkit."""

from avgkit_transformer.config import PRESETS, TransformerConfig
from avgkit_transformer.model import KVCacheState, TransformerBackbone

__all__ = ["PRESETS", "KVCacheState", "TransformerBackbone", "TransformerConfig"]
