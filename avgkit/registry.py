"""Typed registration: (role, name) -> factory + pydantic config + presets.

The registry is filled by the plugin manager (:mod:`avgkit.plugins`) from the
registration hooks; it never imports a plugin itself. A factory or config may be
registered as a ``"package.module:attr"`` string: it is imported the first time the
component is built (or its options are read), so registering stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from avgkit.errors import AvgkitError, did_you_mean
from avgkit.hookspecs import Register

Role = Literal["tokenizer", "backbone", "conditioner", "sampler", "tokenizer_trainer", "metric_logger"]
ROLES: tuple[str, ...] = ("tokenizer", "backbone", "conditioner", "sampler")
#: what `avgkit ls` lists: the model roles and the metric loggers
LISTED: tuple[str, ...] = (*ROLES, "metric_logger")
PLURAL = {"tokenizers": "tokenizer", "backbones": "backbone", "conditioners": "conditioner", "samplers": "sampler",
          "loggers": "metric_logger"}


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


def load_object(ref: str, *, who: str) -> Any:
    """The object a ``"package.module:attr"`` reference names (``attr`` may be dotted)."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise AvgkitError(f"{who}: {ref!r} is not a 'package.module:attr' reference")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # a plugin bug must name the plugin, not crash anonymously
        raise AvgkitError(f"{who}: importing {module_name!r} failed: {type(err).__name__}: {err}") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AvgkitError(f"{who}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


@dataclass
class ComponentSpec:
    """One registered component. ``factory``/``config`` import a lazy reference on first use."""

    role: str
    name: str
    factory_ref: Callable[..., Any] | str
    config_ref: type[BaseModel] | str
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""
    plugin: str = "?"

    @property
    def who(self) -> str:
        return f"plugin {self.plugin!r}, {self.role} {self.name!r}"

    @property
    def loaded(self) -> bool:
        """Whether nothing is left to import (factory and config are objects)."""
        return not isinstance(self.factory_ref, str) and not isinstance(self.config_ref, str)

    @property
    def factory(self) -> Callable[..., Any]:
        if isinstance(self.factory_ref, str):
            obj = load_object(self.factory_ref, who=self.who)
            if not callable(obj):
                raise AvgkitError(f"{self.who}: factory {self.factory_ref!r} is not callable")
            self.factory_ref = obj
        return self.factory_ref

    @property
    def config(self) -> type[BaseModel]:
        if isinstance(self.config_ref, str):
            obj = load_object(self.config_ref, who=self.who)
            _check_config(obj, self.who)
            self.config_ref = obj
        return self.config_ref

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


def _check_config(config: Any, who: str) -> None:
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        raise AvgkitError(f"{who}: needs a pydantic config class, got {config!r}")


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
        self._specs: dict[str, dict[str, ComponentSpec]] = {r: {} for r in (*LISTED, "tokenizer_trainer")}
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
        for ref in (spec.factory_ref, spec.config_ref):
            if isinstance(ref, str) and (ref.count(":") != 1 or ref.startswith(":") or ref.endswith(":")):
                raise AvgkitError(f"{spec.who}: {ref!r} is not a 'package.module:attr' reference")
        if not isinstance(spec.config_ref, str):
            _check_config(spec.config_ref, spec.who)
        if not isinstance(spec.factory_ref, str) and not callable(spec.factory_ref):
            raise AvgkitError(f"{spec.who}: the factory {spec.factory_ref!r} is not callable")
        table[spec.name] = spec

    def register_callback(self, role: str, plugin: str) -> Register:
        """The ``register`` function handed to a registration hook of ``plugin``."""

        def register(
            name: str,
            factory: Callable[..., Any] | str,
            *,
            config: type[BaseModel] | str,
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
            listing = {"metric_logger": "loggers"}.get(role, f"{role}s")
            raise AvgkitError(f"unknown {role.replace('_', ' ')} {name!r}{hint}; `avgkit ls {listing}` lists them{why}")
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
