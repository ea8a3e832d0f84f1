"""Base classes giving one pytest test per conformance check.

Subclass with a name starting with ``Test`` and define the ``make_*`` method; pytest
collects ``test_<check>`` for every check (a check that does not apply is reported
as skipped). pytest is imported only when a test runs, so avgkit needs no pytest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from avgkit.interfaces import Backbone, Conditioner, Sampler, Tokenizer
from avgkit.testing.conformance._common import ConformanceSkip
from avgkit.testing.conformance.backbone import BACKBONE_CHECKS, backbone_cases
from avgkit.testing.conformance.conditioner import CONDITIONER_CHECKS, conditioner_cases
from avgkit.testing.conformance.sampler import SAMPLER_CHECKS, sampler_cases
from avgkit.testing.conformance.tokenizer import TOKENIZER_CHECKS, tokenizer_cases


def _run_one(name: str, check: Callable[[Any], None], cases: list[Any]) -> None:
    skipped = []
    for case in cases:
        try:
            check(case)
        except ConformanceSkip as why:
            skipped.append(f"{case.where}: {why}")
        except AssertionError as err:
            raise AssertionError(f"conformance check {name!r} failed: {err}") from None
    if skipped and len(skipped) == len(cases):
        import pytest

        pytest.skip("; ".join(skipped))


def _add_tests(cls: type, checks: dict[str, Callable[[Any], None]]) -> type:
    for name, check in checks.items():

        def test(self: Any, _name: str = name, _check: Callable[[Any], None] = check) -> None:
            _run_one(_name, _check, self.cases())

        test.__name__ = f"test_{name}"
        test.__doc__ = check.__doc__
        setattr(cls, test.__name__, test)
    return cls


class BackboneSuite:
    """``make_backbone()`` returns a fresh backbone; ``conditioner`` as in :func:`check_backbone`."""

    vocab_size: int | None = None
    num_tokens: int | None = None
    device: str = "cpu"
    conditioner: Any = None
    options: dict[str, Any] = {}

    def make_backbone(self) -> Backbone:
        raise NotImplementedError("define make_backbone() in the subclass")

    def cases(self) -> list[Any]:
        return backbone_cases(self.make_backbone, conditioner=self.conditioner, vocab_size=self.vocab_size,
                              num_tokens=self.num_tokens, device=self.device, **self.options)


class ConditionerSuite:
    """``make_conditioner(dim, num_layers)`` returns a fresh conditioner."""

    dim: int = 32
    num_layers: int = 3
    device: str = "cpu"
    options: dict[str, Any] = {}

    def make_conditioner(self, dim: int, num_layers: int) -> Conditioner:
        raise NotImplementedError("define make_conditioner(dim, num_layers) in the subclass")

    def cases(self) -> list[Any]:
        return conditioner_cases(self.make_conditioner, dim=self.dim, num_layers=self.num_layers,
                                 device=self.device, **self.options)


class TokenizerSuite:
    """``make_tokenizer()`` returns a fresh tokenizer."""

    device: str = "cpu"
    exact_roundtrip: bool = False
    options: dict[str, Any] = {}

    def make_tokenizer(self) -> Tokenizer:
        raise NotImplementedError("define make_tokenizer() in the subclass")

    def cases(self) -> list[Any]:
        return tokenizer_cases(self.make_tokenizer, device=self.device, exact_roundtrip=self.exact_roundtrip,
                               **self.options)


class SamplerSuite:
    """``make_sampler()`` returns a fresh sampler."""

    device: str = "cpu"
    options: dict[str, Any] = {}

    def make_sampler(self) -> Sampler:
        raise NotImplementedError("define make_sampler() in the subclass")

    def cases(self) -> list[Any]:
        return sampler_cases(self.make_sampler, device=self.device, **self.options)


_add_tests(BackboneSuite, BACKBONE_CHECKS)
_add_tests(ConditionerSuite, CONDITIONER_CHECKS)
_add_tests(TokenizerSuite, TOKENIZER_CHECKS)
_add_tests(SamplerSuite, SAMPLER_CHECKS)
