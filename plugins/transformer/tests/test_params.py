"""Preset sizes reproduce LlamaGen's c2i GPT parameter counts exactly."""

from __future__ import annotations

import pytest
import torch
from avgkit_transformer import PRESETS, TransformerBackbone, TransformerConfig
from avgkit_transformer.config import REFERENCE_COUNTS, ffn_hidden_size

from avgkit.testing.toys import ToyClassConditioner, ToyClassConfig


def _meta(preset: str, **extra) -> TransformerBackbone:
    with torch.device("meta"):
        return TransformerBackbone(TransformerConfig(**PRESETS[preset], vocab_size=16384, num_tokens=256, **extra))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset", ["gpt-b", "gpt-l", "gpt-xl", "gpt-xxl"])
def test_counts_match_reference(preset):
    backbone = _meta(preset)
    with torch.device("meta"):  # LlamaGen's class table: 1000 classes + the null class
        cond = ToyClassConditioner(ToyClassConfig(num_classes=1000, modulate=False), dim=backbone.dim,
                                   num_layers=backbone.num_layers)
    total, class_table = REFERENCE_COUNTS[preset]
    assert _count(cond) == class_table
    assert _count(backbone) + _count(cond) == total


def test_headline_sizes():
    assert _count(_meta("gpt-b")) + 1001 * 768 == 110_888_448  # "111M"
    assert _count(_meta("gpt-l")) + 1001 * 1024 == 342_910_976  # "343M"


@pytest.mark.parametrize("dim, expected", [(768, 2048), (1024, 2816), (1280, 3584), (1536, 4096)])
def test_swiglu_width(dim, expected):
    assert ffn_hidden_size(dim, 256) == expected


def test_swiglu_multiplier_and_rounding():
    assert ffn_hidden_size(64, 32) == 192  # int(2 * 256 / 3) = 170 -> 192
    assert ffn_hidden_size(64, 32, 1.5) == 256  # int(1.5 * 170) = 255 -> 256


def test_tied_head_counted_once():
    untied, tied = _meta("gpt-b"), _meta("gpt-b", tie_head=True)
    assert _count(untied) - _count(tied) == 16384 * 768
    assert tied.head.weight is tied.tok_embed.weight
