"""The plugin manager: built-in components plus the ``avgkit`` entry-point group.

First-party plugins (``plugins/``) are found exactly like third-party ones, through
entry points; only avgkit's own built-ins (the autoregressive sampler and the toy
components used by the core tests) are registered directly.

Set ``AVGKIT_DISABLE_PLUGINS=name1,name2`` to skip installed plugins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from avgkit import hookspecs
from avgkit.errors import AvgkitError, did_you_mean
from avgkit.hookspecs import API_VERSION
from avgkit.registry import Registry

ENTRY_POINT_GROUP = "avgkit"
_ROLE_HOOKS = {
    "tokenizer": "avgkit_register_tokenizers",
    "backbone": "avgkit_register_backbones",
    "conditioner": "avgkit_register_conditioners",
    "sampler": "avgkit_register_samplers",
    "tokenizer_trainer": "avgkit_register_tokenizer_trainers",
    "metric_logger": "avgkit_register_metric_loggers",
}


@dataclass
class PluginInfo:
    name: str
    module: str
    version: str
    api_version: str
    builtin: bool = False
    registers: dict[str, list[str]] = field(default_factory=dict)


def _check_api(name: str, module: ModuleType) -> str:
    declared = getattr(module, "AVGKIT_API_VERSION", None)
    if declared is None:
        raise AvgkitError(
            f"plugin {name!r} ({module.__name__}) does not declare AVGKIT_API_VERSION; "
            f"add AVGKIT_API_VERSION = {API_VERSION!r} to the module"
        )
    if not _compatible(str(declared), API_VERSION):
        raise AvgkitError(
            f"plugin {name!r} was written for avgkit API {declared}, this avgkit speaks {API_VERSION}; "
            f"upgrade the plugin or avgkit, or set AVGKIT_DISABLE_PLUGINS={name}"
        )
    return str(declared)


def _check_hooks(name: str, module: ModuleType, pm: pluggy.PluginManager) -> None:
    """Every ``avgkit_*`` function of a plugin is a known hook, marked as an implementation.

    pluggy would keep a misspelt implementation as a hook nobody calls, and skip an
    unmarked one: either way the plugin silently registers nothing.
    """
    known = {n for n in dir(hookspecs) if n.startswith("avgkit_")}
    unknown = [hc.name for hc in pm.get_hookcallers(pm.get_plugin(name)) or [] if hc.spec is None]
    unmarked = [n for n, f in vars(module).items() if n.startswith("avgkit_") and callable(f)
                and n in known and not hasattr(f, "avgkit_impl")]
    unknown += [n for n, f in vars(module).items() if n.startswith("avgkit_") and callable(f)
                and n not in known and n not in unknown]
    if unknown:
        hook = unknown[0]
        pm.unregister(name=name)
        raise AvgkitError(
            f"plugin {name!r} ({module.__name__}) implements {hook!r}, which is no avgkit hook"
            f"{did_you_mean(hook, sorted(known))}; rename it (avgkit/hookspecs.py lists the hooks)"
        )
    if unmarked:
        pm.unregister(name=name)
        raise AvgkitError(
            f"plugin {name!r} ({module.__name__}) defines {unmarked[0]!r} without @avgkit.hookimpl, so it is never "
            "called; decorate it"
        )


def _compatible(declared: str, ours: str) -> bool:
    """Same major version, and not a newer minor one (whose features this avgkit lacks)."""

    def parts(v: str) -> tuple[int, int]:
        major, _, minor = v.partition(".")
        try:
            return int(major), int(minor or 0)
        except ValueError:
            return -1, 0

    d, o = parts(declared), parts(ours)
    return d[0] == o[0] and d[1] <= o[1]


class PluginManager:
    def __init__(self, entry_points: bool = True, extra: list[tuple[str, ModuleType]] | None = None) -> None:
        self.pm = pluggy.PluginManager("avgkit")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.disabled: tuple[str, ...] = ()
        from avgkit import builtin

        self._add("avgkit", builtin, version=_avgkit_version(), builtin=True)
        if entry_points:
            self._load_entry_points()
        for name, module in extra or []:
            self._add(name, module, version="(test)")
        self.registry = Registry(disabled_plugins=self.disabled)
        self._fill_registry()

    def _add(self, name: str, module: ModuleType, *, version: str, builtin: bool = False) -> None:
        api = _check_api(name, module)
        if name in self.infos:
            raise AvgkitError(f"two plugins are named {name!r}; uninstall one of them")
        self.pm.register(module, name=name)
        _check_hooks(name, module, self.pm)
        self.infos[name] = PluginInfo(name, module.__name__, version, api, builtin)

    def _load_entry_points(self) -> None:
        disabled = {s.strip() for s in os.environ.get("AVGKIT_DISABLE_PLUGINS", "").split(",") if s.strip()}
        installed = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        names = [ep.name for ep in installed]
        for name in sorted(disabled - set(names)):  # a typo would leave the plugin on, silently
            raise AvgkitError(
                f"AVGKIT_DISABLE_PLUGINS names {name!r}, which is not an installed plugin{did_you_mean(name, names)}; "
                f"installed: {', '.join(names) or 'none'}"
            )
        self.disabled = tuple(sorted(disabled))
        for ep in installed:
            if ep.name in disabled:
                continue
            try:
                module = ep.load()
            except Exception as err:  # a broken plugin must say who it is
                raise AvgkitError(
                    f"plugin {ep.name!r} ({ep.value}) failed to import: {type(err).__name__}: {err}; "
                    f"fix or uninstall it, or set AVGKIT_DISABLE_PLUGINS={ep.name}"
                ) from err
            dist = getattr(ep, "dist", None)
            self._add(ep.name, module, version=dist.version if dist is not None else "?")

    def _fill_registry(self) -> None:
        for role, hook_name in _ROLE_HOOKS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                try:
                    impl.function(register=self.registry.register_callback(role, impl.plugin_name))
                except AvgkitError:
                    raise
                except Exception as err:  # a plugin bug must name the plugin, not crash anonymously
                    raise AvgkitError(
                        f"plugin {impl.plugin_name!r} failed while registering {role}s: {type(err).__name__}: {err}; "
                        f"fix or uninstall it, or set AVGKIT_DISABLE_PLUGINS={impl.plugin_name}"
                    ) from err
        for name, info in self.infos.items():
            info.registers = self.registry.by_plugin(name)

    def recipe_dirs(self) -> list[Path]:
        dirs: list[Path] = []
        for result in self.pm.hook.avgkit_recipe_dirs():
            dirs.extend(Path(p) for p in result)
        return dirs

    def register_commands(self, app: Any) -> None:
        self.pm.hook.avgkit_register_commands(app=app)

    def convert(self, source: str, state_dict: Any, role: str, name: str, config: Any, num_layers: int | None = None):
        """The ``ConvertedWeights`` of one component, or None when no plugin owns it."""
        answers = [
            a
            for a in self.pm.hook.avgkit_convert_checkpoint(
                source=source, state_dict=state_dict, role=role, name=name, config=config, num_layers=num_layers
            )
            if a is not None
        ]
        if len(answers) > 1:
            raise AvgkitError(f"several plugins convert {role} {name!r} from {source!r}; disable one of them")
        return answers[0] if answers else None

    def checkpoint_formats(self) -> list[str]:
        return sorted({f for result in self.pm.hook.avgkit_checkpoint_formats() for f in result})


def _avgkit_version() -> str:
    from avgkit import __version__

    return __version__


_MANAGER: PluginManager | None = None


def get_manager() -> PluginManager:
    """The process-wide plugin manager (built on first use)."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = PluginManager()
    return _MANAGER


def get_registry() -> Registry:
    return get_manager().registry


def reset(manager: PluginManager | None = None) -> None:
    """Forget (or replace) the process-wide manager; for tests."""
    global _MANAGER
    _MANAGER = manager
