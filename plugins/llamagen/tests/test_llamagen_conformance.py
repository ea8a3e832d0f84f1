"""The LlamaGen VQ tokenizer passes avgkit's tokenizer conformance suite (its CPU-sized preset)."""

from __future__ import annotations

from avgkit_llamagen.vq_model import LlamaGenVQ
from llamagen_testutil import tiny_config

from avgkit.plugins import get_registry
from avgkit.testing.conformance import TokenizerSuite


class TestDigitsVQ(TokenizerSuite):
    def make_tokenizer(self):
        spec = get_registry().get("tokenizer", "llamagen-vq")
        return spec.factory(spec.resolve("digits"))


class TestNonSquareVQ(TokenizerSuite):
    """16x32 images on a 4x8 grid."""

    def make_tokenizer(self):
        return LlamaGenVQ(tiny_config(image_size=[16, 32]))
