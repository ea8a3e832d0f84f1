"""Typed registration: (role, name) -> factory + pydantic config + presets.

The registry is filled by the plugin manager (:mod:`avgkit.plugins`) from the
registration hooks; it never imports a plugin itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from avgkit.errors import AvgkitError, did_you_mean

Role = Literal["tokenizer", "backbone", "conditioner", "sampler", "tokenizer_trainer"]
ROLES: tuple[str, ...] = ("tokenizer", "backbone", "conditioner", "sampler")
PLURAL = {"tokenizers": "tokenizer", "backbones": "backbone", "conditioners": "conditioner", "samplers": "sampler"}


class ComponentConfig(BaseModel):
    """Base of every component's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class BackboneConfig(ComponentConfig):
    vocab_size: int | None = Field(None, description="codebook size; taken from the tokenizer when unset")
    num_tokens: int | None = Field(None, description="image tokens per sample; taken from the tokenizer when unset")


class ConditionerConfig(ComponentConfig):
    num_classes: int | None = Field(
        None, ge=1, description="class labels (the null label is num_classes); default: the recipe's data.num_classes"
    )
    label_dropout: float = Field(0.1, ge=0.0, le=1.0, description="training probability of the null label (CFG)")


@dataclass
class ComponentSpec:
    role: str
    name: str
    factory: Callable[..., Any]
    config: type[BaseModel]
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""
    plugin: str = "?"

    def resolve(self, preset: str | None = None, options: Mapping[str, Any] | None = None) -> BaseModel:
        """Validate ``preset`` values overlaid with ``options`` into a config instance."""
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in self.presets:
                raise AvgkitError(
                    f"{self.role} {self.name!r} has no preset {preset!r}{did_you_mean(preset, self.presets)}"
                )
            values.update(self.presets[preset])
        values.update(options or {})
        try:
            return self.config(**values)
        except ValidationError as err:
            raise AvgkitError(_explain(err, f"{self.role} {self.name!r}", self.config)) from None


def _explain(err: ValidationError, where: str, model: type[BaseModel]) -> str:
    """First validation problem as one line, with a did-you-mean for unknown keys."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        key = str(e["loc"][-1])
        return f"{where}: unknown option {loc!r}{did_you_mean(key, model.model_fields)}"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{where}: option {loc!r}: {e['msg']}{more}"


class Registry:
    def __init__(self, disabled_plugins: tuple[str, ...] = ()) -> None:
        self._specs: dict[str, dict[str, ComponentSpec]] = {r: {} for r in (*ROLES, "tokenizer_trainer")}
        #: installed plugins left out by AVGKIT_DISABLE_PLUGINS (named when a component is unknown)
        self.disabled_plugins = disabled_plugins

    def add(self, spec: ComponentSpec) -> None:
        table = self._specs[spec.role]
        if spec.name in table:
            other = table[spec.name].plugin
            raise AvgkitError(
                f"{spec.role} {spec.name!r} is registered twice: by plugin {other!r} and by plugin "
                f"{spec.plugin!r}; uninstall one of them or rename the component"
            )
        if not (isinstance(spec.config, type) and issubclass(spec.config, BaseModel)):
            raise AvgkitError(f"plugin {spec.plugin!r}: {spec.role} {spec.name!r} needs a pydantic config class")
        table[spec.name] = spec

    def register_callback(self, role: str, plugin: str) -> Callable[..., None]:
        """The ``register`` function handed to a registration hook of ``plugin``."""

        def register(
            name: str,
            factory: Callable[..., Any],
            *,
            config: type[BaseModel],
            presets: Mapping[str, Mapping[str, Any]] | None = None,
            description: str = "",
        ) -> None:
            self.add(ComponentSpec(role, name, factory, config, dict(presets or {}), description, plugin))

        return register

    def get(self, role: str, name: str) -> ComponentSpec:
        table = self._specs[role]
        if name not in table:
            known = ", ".join(sorted(table)) or "none installed"
            hint = did_you_mean(name, table)
            if not hint:
                hint = f" (installed: {known})"
            off = ",".join(self.disabled_plugins)
            why = f" (AVGKIT_DISABLE_PLUGINS={off} is set: is it from a disabled plugin?)" if off else ""
            raise AvgkitError(f"unknown {role} {name!r}{hint}; `avgkit ls {role}s` lists them{why}")
        return table[name]

    def names(self, role: str) -> list[str]:
        return sorted(self._specs[role])

    def specs(self, role: str) -> list[ComponentSpec]:
        return [self._specs[role][n] for n in self.names(role)]

    def by_plugin(self, plugin: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for role, table in self._specs.items():
            names = sorted(n for n, s in table.items() if s.plugin == plugin)
            if names:
                out[role] = names
        return out
