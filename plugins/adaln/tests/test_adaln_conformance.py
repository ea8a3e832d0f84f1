"""Every conditioner of the plugin passes avgkit's conditioner conformance suite."""

from __future__ import annotations

from avgkit.plugins import get_registry
from avgkit.testing.conformance import ConditionerSuite


def _make(name: str, **options):
    def make(dim: int, num_layers: int):
        spec = get_registry().get("conditioner", name)
        return spec.factory(spec.resolve(None, {"num_classes": 10, **options}), dim=dim, num_layers=num_layers)

    return make


class TestAdaLN(ConditionerSuite):
    def make_conditioner(self, dim, num_layers):
        return _make("adaln")(dim, num_layers)


class TestAdaLNGroup(ConditionerSuite):
    num_layers = 4

    def make_conditioner(self, dim, num_layers):
        return _make("adaln-group", groups=2)(dim, num_layers)


class TestAdaLNSingle(ConditionerSuite):
    def make_conditioner(self, dim, num_layers):
        return _make("adaln-single")(dim, num_layers)


class TestClassToken(ConditionerSuite):
    def make_conditioner(self, dim, num_layers):
        return _make("class-token")(dim, num_layers)
