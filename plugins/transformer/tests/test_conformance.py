"""The transformer backbone passes avgkit's backbone conformance suite."""

from __future__ import annotations

from avgkit_transformer import PRESETS, TransformerBackbone, TransformerConfig

from avgkit.testing.conformance import BackboneSuite, check_backbone


class TestTinyTransformer(BackboneSuite):
    """The ``tiny`` preset with the toy conditioner (adaLN and class token only)."""

    vocab_size = 16
    num_tokens = 16

    def make_backbone(self) -> TransformerBackbone:
        return TransformerBackbone(TransformerConfig(**PRESETS["tiny"], vocab_size=16, num_tokens=16, max_prefix_len=6))


def test_variant_conforms():
    """Grouped-query attention, unrotated prefix, tied head, dropout, a non-square grid."""
    variant = dict(PRESETS["tiny"], kv_heads=2, prefix_rope="identity", tie_head=True, token_dropout=0.1,
                   drop_path=0.1, grid_width=4)
    report = check_backbone(
        lambda: TransformerBackbone(TransformerConfig(**variant, vocab_size=16, num_tokens=12)),
        vocab_size=16,
        num_tokens=12,
        only=["forward", "causal", "modulation", "decode_matches_forward", "select_state", "gradients"],
    )
    assert all(v == "ok" for k, v in report.items() if not k.startswith("modulation")), report
