"""Every hook a plugin can implement. This module is the only place hooks are defined.

A plugin is a module registered under the ``avgkit`` entry-point group that declares
``AVGKIT_API_VERSION = "1.1"`` and implements any of these hooks with
``@avgkit.hookimpl``. Registration hooks receive a ``register`` callback, so one
plugin can register many components and the registry knows which plugin each came
from::

    from avgkit import hookimpl

    AVGKIT_API_VERSION = "1.1"

    @hookimpl
    def avgkit_register_backbones(register):
        register("my-net", build_my_net, config=MyNetConfig, presets={"tiny": {...}})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("avgkit")
hookimpl = pluggy.HookimplMarker("avgkit")


@hookspec
def avgkit_register_tokenizers(register: Callable[..., None]) -> None:
    """Register tokenizers.

    ``register(name, factory, *, config, presets=None, description="")`` where
    ``factory(config) -> avgkit.interfaces.Tokenizer`` and ``config`` is a pydantic
    model class (``extra="forbid"``) validating the component's options. ``presets``
    maps a preset name (``"vq-16"``) to option values.
    """


@hookspec
def avgkit_register_backbones(register: Callable[..., None]) -> None:
    """Register sequence backbones.

    ``factory(config) -> avgkit.interfaces.Backbone``. The config model must subclass
    ``avgkit.registry.BackboneConfig`` (fields ``vocab_size`` and ``num_tokens``, which
    the core fills from the tokenizer when left unset and checks when set).
    """


@hookspec
def avgkit_register_conditioners(register: Callable[..., None]) -> None:
    """Register conditioners.

    ``factory(config, *, dim, num_layers) -> avgkit.interfaces.Conditioner``, where
    ``dim`` and ``num_layers`` come from the backbone it is paired with. The config model
    must subclass ``avgkit.registry.ConditionerConfig`` (``num_classes``,
    ``label_dropout``).
    """


@hookspec
def avgkit_register_samplers(register: Callable[..., None]) -> None:
    """Register samplers: ``factory(config) -> avgkit.interfaces.Sampler``."""


@hookspec
def avgkit_register_tokenizer_trainers(register: Callable[..., None]) -> None:
    """Register a trainer for a tokenizer registered under the same name.

    ``register(tokenizer_name, train_fn, *, config)`` where
    ``train_fn(tokenizer_config, train_config, images, out_dir, *, eval_images=None,
    resume=True, progress=True) -> Path`` trains on ``images`` ((N, C, H, W) floats in
    [-1, 1]) and returns the path of the trained weights (safetensors).
    """


@hookspec
def avgkit_recipe_dirs() -> list[Path]:
    """Folders of packaged ``*.yaml`` recipes that ``avgkit recipes ls`` lists."""
    raise NotImplementedError


@hookspec
def avgkit_register_commands(app: Any) -> None:
    """Add subcommands to the ``avgkit`` typer app (``app.command()(fn)``)."""


@hookspec
def avgkit_convert_checkpoint(
    source: str, state_dict: Mapping[str, Any], role: str, name: str, config: Any, num_layers: int | None
) -> Any:
    """Convert one component's part of an external checkpoint.

    ``source`` names the checkpoint format (``"aim"``, ``"llamagen-vq"``, ...);
    ``state_dict`` is the whole external state dict (tensors, read without executing
    code); ``role``/``name``/``config`` identify the component being built, and
    ``num_layers`` is the backbone's depth (conditioners need it). Return an
    ``avgkit.convert.ConvertedWeights`` (the component's own state dict and the
    external keys consumed), or ``None`` when this plugin does not own that component.
    Plugins never import each other: a checkpoint mixing backbone, conditioner and
    tokenizer weights is split by asking every plugin, and keys nobody consumed are
    reported.
    """


@hookspec
def avgkit_checkpoint_formats() -> list[str]:
    """Names of external checkpoint formats this plugin can convert (for ``avgkit convert``)."""
    raise NotImplementedError


ALL_HOOKS = [
    name for name, obj in dict(globals()).items() if name.startswith("avgkit_") and callable(obj)
]
