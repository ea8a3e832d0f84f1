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
        register("my-net", "my_pkg.model:MyNet", config="my_pkg.model:MyNetConfig", presets={"tiny": {...}})

``factory`` and ``config`` are the objects themselves or ``"package.module:attr"``
strings, imported only when the component is first built or its options are first
needed. Every plugin is loaded on each ``avgkit`` start (``--help``, ``ls``,
``plugins``), so a plugin module and whatever registration needs (names, presets,
descriptions) must not import torch or the model code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pluggy

#: Version of the plugin API (these hooks, the ``register`` callbacks and
#: ``avgkit.interfaces``). A plugin declares the version it was written for as the module
#: attribute ``AVGKIT_API_VERSION``: another major version, or a newer minor one than
#: this avgkit's, is refused. 1.1 added lazy ``"module:attr"`` factories and configs; 1.2
#: condition batches beyond class ids (token ids or embeddings with masks, avgkit.conditions)
#: and the prefix mask of a ``Conditioning``.
API_VERSION = "1.2"

hookspec = pluggy.HookspecMarker("avgkit")
hookimpl = pluggy.HookimplMarker("avgkit")


class Register(Protocol):
    """The ``register`` callback every registration hook receives (one per role and plugin).

    ``name``: the component's registry name; ``factory``: a class or function building it
    from a config instance (or ``"package.module:attr"``); ``config``: its pydantic options
    model (or such a string); ``presets``: named option sets; ``description``: one line
    for ``avgkit ls``. Registering the same (role, name) twice is an error naming both
    plugins.
    """

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any] | str,
        *,
        config: type | str,
        presets: Mapping[str, Mapping[str, Any]] | None = None,
        description: str = "",
    ) -> None: ...


@hookspec
def avgkit_register_tokenizers(register: Register) -> None:
    """Register tokenizers.

    ``register(name, factory, *, config, presets=None, description="")`` where
    ``factory(config) -> avgkit.interfaces.Tokenizer`` and ``config`` is a pydantic
    model class (``extra="forbid"``) validating the component's options. Either may be
    given as a ``"package.module:attr"`` string, imported when first used (API 1.1), so
    that registering imports nothing heavy. ``presets`` maps a preset name
    (``"vq-16"``) to option values.
    """


@hookspec
def avgkit_register_backbones(register: Register) -> None:
    """Register sequence backbones.

    ``factory(config) -> avgkit.interfaces.Backbone``. The config model must subclass
    ``avgkit.registry.BackboneConfig`` (fields ``vocab_size`` and ``num_tokens``, which
    the core fills from the tokenizer when left unset and checks when set).
    """


@hookspec
def avgkit_register_conditioners(register: Register) -> None:
    """Register conditioners.

    ``factory(config, *, dim, num_layers) -> avgkit.interfaces.Conditioner``, where
    ``dim`` and ``num_layers`` come from the backbone it is paired with. The config model
    must subclass ``avgkit.registry.ConditionerConfig`` (``num_classes``,
    ``label_dropout``).
    """


@hookspec
def avgkit_register_samplers(register: Register) -> None:
    """Register samplers: ``factory(config) -> avgkit.interfaces.Sampler``."""


@hookspec
def avgkit_register_tokenizer_trainers(register: Register) -> None:
    """Register a trainer for a tokenizer registered under the same name.

    ``register(tokenizer_name, train_fn, *, config)`` where
    ``train_fn(tokenizer_config, train_config, images, out_dir, *, eval_images=None,
    resume=True, progress=True) -> Path`` trains on ``images`` ((N, C, H, W) floats in
    [-1, 1]) and returns the path of the trained weights (safetensors).
    """


@hookspec
def avgkit_register_metric_loggers(register: Register) -> None:
    """Register metric loggers (experiment trackers), chosen by a recipe's ``loggers:`` list.

    ``register(name, factory, *, config, presets=None, description="")`` where
    ``factory(config, *, run_dir, recipe) -> avgkit.loggers.MetricLogger`` (methods
    ``log_metrics(step, metrics)``, ``log_images(step, images)`` and ``close()``) and
    ``config`` subclasses ``avgkit.loggers.LoggerConfig``. Only the main process builds
    loggers; ``metrics.jsonl`` is written whatever the list says (API 1.1).
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
