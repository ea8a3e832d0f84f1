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


class TestTinyMambaChunkedForm(BackboneSuite):
    """The chunked form with a window of 5: 12 tokens fold the state twice and leave a partial window."""

    vocab_size = 16
    num_tokens = 12

    def make_backbone(self):
        return _tiny(decode_form="chunked", decode_chunk=5, ngroups=2)


class TestTinyMambaInt8State(BackboneSuite):
    """The one-byte (int8, per-row scales) state: decoding matches teacher forcing to its quantisation error.

    The checks compare decoded logits with the fp32 forward at ``atol``; int8 rows carry a
    relative rounding error of up to 1/254 of their maximum, which reaches the logits of
    this tiny model's logits (magnitude 1.4-2.4) at 2e-4 and 6e-4 for its two conditioners,
    hence 2e-3. The other checks do not read the state's values, or compare int8 decoding with
    itself (select_state), at the same tolerance.
    """

    vocab_size = 16
    num_tokens = 12
    options = {"atol": 2e-3}

    def make_backbone(self):
        return _tiny(state_dtype="int8")
