"""The LlamaGen VQ tokenizer passes avgkit's tokenizer conformance suite (its CPU-sized preset)."""

from __future__ import annotations

from avgkit.plugins import get_registry
from avgkit.testing.conformance import TokenizerSuite


class TestDigitsVQ(TokenizerSuite):
    def make_tokenizer(self):
        spec = get_registry().get("tokenizer", "llamagen-vq")
        return spec.factory(spec.resolve("digits"))
