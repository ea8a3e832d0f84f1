"""Conformance suites: the promises of :mod:`avgkit.interfaces`, as checks a plugin runs in its tests.

Plain functions, usable from any test (each raises ``AssertionError`` naming the
first broken promise and returns ``{check: "ok" | "skipped: why"}``)::

    from avgkit.testing.conformance import check_backbone

    def test_my_net_conforms():
        check_backbone(lambda: MyNet(MyNetConfig(vocab_size=16, num_tokens=16)))

or one pytest test per check, by subclassing a suite (the class name must start
with ``Test`` so that pytest collects it)::

    from avgkit.testing.conformance import BackboneSuite

    class TestMyNet(BackboneSuite):
        def make_backbone(self):
            return MyNet(MyNetConfig(vocab_size=16, num_tokens=16))

Backbones are checked with the built-in toy conditioner both with adaLN modulation
and as a class token only, unless ``conditioner=`` says otherwise. Check names are
the keys of ``BACKBONE_CHECKS``, ``CONDITIONER_CHECKS``, ``TOKENIZER_CHECKS`` and
``SAMPLER_CHECKS``; ``only=`` and ``skip=`` select among them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from avgkit.interfaces import Backbone, Conditioner, Sampler, Tokenizer
from avgkit.testing.conformance._common import ConformanceSkip
from avgkit.testing.conformance.backbone import (
    BACKBONE_CHECKS,
    BackboneCase,
    backbone_cases,
    toy_conditioners,
)
from avgkit.testing.conformance.conditioner import CONDITIONER_CHECKS, ConditionerCase, conditioner_cases
from avgkit.testing.conformance.runner import run_checks
from avgkit.testing.conformance.sampler import SAMPLER_CHECKS, SamplerCase, sampler_cases
from avgkit.testing.conformance.suites import BackboneSuite, ConditionerSuite, SamplerSuite, TokenizerSuite
from avgkit.testing.conformance.tokenizer import TOKENIZER_CHECKS, TokenizerCase, tokenizer_cases


def check_backbone(
    backbone: Backbone | Callable[[], Backbone],
    *,
    conditioner: Any = None,
    vocab_size: int | None = None,
    num_tokens: int | None = None,
    device: str = "cpu",
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    **options: Any,
) -> dict[str, str]:
    """Check a backbone (instance or zero-argument factory; a factory also tests fresh instances).

    ``conditioner``: ``None`` (toy conditioner with and without modulation), a
    conditioner, a factory ``(dim, num_layers) -> Conditioner``, or a mapping
    name -> either. ``options``: ``batch_size``, ``seed``, ``atol`` (relative to the
    logit scale, default 1e-5), ``perturb`` (weight noise std, default 0.05).
    """
    cases = backbone_cases(backbone, conditioner=conditioner, vocab_size=vocab_size, num_tokens=num_tokens,
                           device=device, **options)
    return run_checks(BACKBONE_CHECKS, cases, only=only, skip=skip)


def check_conditioner(
    conditioner: Conditioner | Callable[[int, int], Conditioner],
    *,
    dim: int = 32,
    num_layers: int = 3,
    device: str = "cpu",
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    **options: Any,
) -> dict[str, str]:
    """Check a conditioner (instance, or factory ``(dim, num_layers) -> Conditioner``)."""
    cases = conditioner_cases(conditioner, dim=dim, num_layers=num_layers, device=device, **options)
    return run_checks(CONDITIONER_CHECKS, cases, only=only, skip=skip)


def check_tokenizer(
    tokenizer: Tokenizer | Callable[[], Tokenizer],
    *,
    device: str = "cpu",
    exact_roundtrip: bool = False,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    **options: Any,
) -> dict[str, str]:
    """Check a tokenizer; ``exact_roundtrip`` claims ``encode(decode(codes)) == codes``."""
    cases = tokenizer_cases(tokenizer, device=device, exact_roundtrip=exact_roundtrip, **options)
    return run_checks(TOKENIZER_CHECKS, cases, only=only, skip=skip)


def check_sampler(
    sampler: Sampler | Callable[[], Sampler],
    *,
    device: str = "cpu",
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    **options: Any,
) -> dict[str, str]:
    """Check a sampler; ``options`` may set ``make_backbone``, ``make_conditioner``, ``sample_kwargs``."""
    return run_checks(SAMPLER_CHECKS, sampler_cases(sampler, device=device, **options), only=only, skip=skip)


__all__ = [
    "BACKBONE_CHECKS",
    "CONDITIONER_CHECKS",
    "SAMPLER_CHECKS",
    "TOKENIZER_CHECKS",
    "BackboneCase",
    "BackboneSuite",
    "ConditionerCase",
    "ConditionerSuite",
    "ConformanceSkip",
    "SamplerCase",
    "SamplerSuite",
    "TokenizerCase",
    "TokenizerSuite",
    "check_backbone",
    "check_conditioner",
    "check_sampler",
    "check_tokenizer",
    "run_checks",
    "toy_conditioners",
]
