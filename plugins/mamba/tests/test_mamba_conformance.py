"""The Mamba-2 backbone passes avgkit's backbone conformance suite, in both decoding layouts."""

from __future__ import annotations

from avgkit.plugins import get_registry
from avgkit.testing.conformance import BackboneSuite


def _tiny(**options):
    spec = get_registry().get("backbone", "mamba2")
    return spec.factory(spec.resolve("tiny", {"vocab_size": 16, "num_tokens": 12, **options}))


class TestTinyMamba(BackboneSuite):
    """The ``tiny`` preset, recurrent state, with the toy conditioner (adaLN and class token only)."""

    vocab_size = 16
    num_tokens = 12

    def make_backbone(self):
        return _tiny()


class TestTinyMambaDualForm(BackboneSuite):
    """The same with the dual-form caches, two groups of B/C."""

    vocab_size = 16
    num_tokens = 12

    def make_backbone(self):
        return _tiny(decode_form="dual", ngroups=2, max_prefix_len=6)
