"""External checkpoints: safe loading and the conversion helpers plugins share.

A checkpoint is read without executing code (safetensors, or ``torch.load`` with
``weights_only=True``), then every plugin converts the part it owns through the
``avgkit_convert_checkpoint`` hook, answering with :class:`ConvertedWeights`. Keys no
plugin consumed are reported by name.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from avgkit.errors import AvgkitError
from avgkit.state_dicts import key_list, state_dict_problems


class ConvertedWeights(NamedTuple):
    """A component's own state dict, and the external keys it was made from."""

    state_dict: dict[str, Tensor]
    consumed: set[str]


def load_external_state_dict(path: str | Path, *, nested: Iterable[str] = ("model", "state_dict", "module")) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors``/``.pt``/``.pth``/``.bin`` file, never unpickling code.

    A ``.pt`` whose top level is a dict holding the weights under one of ``nested``
    (LlamaGen: ``"model"``) is unwrapped.
    """
    path = Path(path)
    if not path.exists():
        raise AvgkitError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise AvgkitError(f"{path} is not a readable safetensors file ({err})") from None
    try:
        obj: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        from avgkit.state_dicts import refused_load_message

        raise AvgkitError(refused_load_message(path, err)) from None
    except Exception as err:
        raise AvgkitError(f"{path} could not be read as a checkpoint ({type(err).__name__}: {err})") from None
    for key in nested:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise AvgkitError(f"{path} is not a state dict of tensors")
    return dict(obj)


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keys under ``prefix`` with it removed (``"mamba."``: AiM's wrapper)."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------- driver
_MODEL_ROLES = ("backbone", "conditioner")


@dataclass
class ConvertedCheckpoint:
    """The result of converting an external state dict for one recipe.

    ``model_state`` has ARModel keys (``backbone.*``, ``conditioner.*``), or is ``None``
    when the source holds no model (a tokenizer file); ``tokenizer_state`` is the
    tokenizer's own state dict, or ``None`` when the source carries no tokenizer weights.
    """

    model_state: dict[str, Tensor] | None
    tokenizer_state: dict[str, Tensor] | None
    consumed: set[str]
    converted_by: dict[str, str] = field(default_factory=dict)


def building_recipe(recipe: Any) -> Any:
    """``recipe`` with the tokenizer's ``weights`` option cleared (conversion builds on meta)."""
    if "weights" not in recipe.tokenizer.options:
        return recipe
    options = {**recipe.tokenizer.options, "weights": None}
    return recipe.model_copy(update={"tokenizer": recipe.tokenizer.model_copy(update={"options": options})})


def _ask(manager: Any, source: str, state_dict: Mapping[str, Tensor], role: str, ref: Any, config: Any,
         num_layers: int) -> ConvertedWeights | None:
    try:
        return manager.convert(source, state_dict, role, ref.name, config, num_layers)
    except AvgkitError as err:
        raise AvgkitError(f"converting {role} {ref.name!r} from {source!r}: {err}") from None


def convert_state_dict(
    state_dict: Mapping[str, Tensor],
    source: str,
    recipe: Any,
    *,
    components: Any = None,
    tokenizer_state_dict: Mapping[str, Tensor] | None = None,
    tokenizer_source: str | None = None,
    what: str = "checkpoint",
) -> ConvertedCheckpoint:
    """Convert an external state dict into ``recipe``'s components through their plugins.

    Every component (backbone, conditioner, tokenizer) is offered the whole state dict via
    ``PluginManager.convert``; each answers with its own weights and the keys it consumed.
    A separate tokenizer file (``tokenizer_state_dict``) is converted with
    ``tokenizer_source`` (default: the tokenizer's registry name) or taken as is when no
    plugin converts it. Keys nobody consumed, and missing or mis-shaped weights, are
    reported together in one line. Works on meta tensors (names and shapes only) when
    ``components`` were built on the meta device.
    """
    from avgkit.build import ARModel, build
    from avgkit.plugins import get_manager

    manager = get_manager()
    comps = components if components is not None else build(building_recipe(recipe), device="meta")
    layers = comps.backbone.num_layers
    refs = {role: getattr(recipe, role) for role in ("backbone", "conditioner", "tokenizer")}
    answers = {role: _ask(manager, source, state_dict, role, refs[role], comps.configs[role], layers) for role in refs}
    consumed: set[str] = set()
    for answer in answers.values():
        if answer is not None:
            consumed |= set(answer.consumed)
    by = {role: source for role, a in answers.items() if a is not None}

    tokenizer = answers["tokenizer"].state_dict if answers["tokenizer"] is not None else None
    if tokenizer_state_dict is not None:
        tok_source = tokenizer_source or refs["tokenizer"].name
        own = _ask(manager, tok_source, tokenizer_state_dict, "tokenizer", refs["tokenizer"], comps.configs["tokenizer"],
                   layers)
        tokenizer = dict(own.state_dict) if own is not None else dict(tokenizer_state_dict)
        by["tokenizer"] = tok_source if own is not None else "as is"

    problems: list[str] = []
    unknown = sorted(set(state_dict) - consumed)
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s) that no component uses: {key_list(unknown)}")
    model = None
    parts = {role: a for role in _MODEL_ROLES if (a := answers[role]) is not None}
    if parts:
        for role in _MODEL_ROLES:
            if role not in parts:
                problems.append(f"no installed plugin converts {role} {refs[role].name!r} from format {source!r}")
        if len(parts) == len(_MODEL_ROLES):
            model = {f"{role}.{k}": v for role, a in parts.items() for k, v in a.state_dict.items()}
            problems += state_dict_problems(ARModel(comps.backbone, comps.conditioner), model)
    if tokenizer is not None:
        problems += state_dict_problems(comps.tokenizer, tokenizer, prefix="tokenizer.")
    if model is None and tokenizer is None and not problems:
        formats = ", ".join(manager.checkpoint_formats()) or "none"
        problems.append(f"no installed plugin converts any component of this recipe from format {source!r} "
                        f"(formats the installed plugins convert: {formats})")
    if problems:
        raise AvgkitError(f"{what} cannot be converted for recipe {recipe.name!r} ({source}): " + "; ".join(problems))
    return ConvertedCheckpoint(model, tokenizer, consumed, by)


#: SHA-256 of official files, by file name (from their publishers' Git LFS records). A
#: file of a known name with another hash is refused unless ``skip_hash_check``.
KNOWN_FILES: dict[str, str] = {
    # hp-l33/aim on the Hugging Face hub (the AiM release)
    "aim_b.bin": "91dc959135df3bc644106dbcb8019f2eaed900b74541309f068891a76cb24f3f",
    "aim_l.bin": "93eb1da5941399e3cb65fb83a1e0abab36928337875557abf40ff56d2e63af5f",
    "aim_xl.bin": "57b8141bd34aa4b67380b269f335d4d51ec87c435273fba3ee864b8574a78523",
    # FoundationVision/LlamaGen: the VQ-16 tokenizer AiM uses
    "vq_ds16_c2i.pt": "109aa8afb2cf3761eec23cdc8644154cb498f5ab7eef2a35264d25e5e0499f7d",
}

#: Recipe options a format implies unless the command line sets them, with the reason
#: recorded in convert.json. AiM's released sampler feeds position k + 1 to the token of
#: step k; only ``positions=reference`` reproduces its logits and the paper's numbers.
FORMAT_DEFAULTS: dict[str, dict[str, tuple[Any, str]]] = {
    "aim": {"backbone.positions": ("reference", "the released AiM sampler's position convention, needed to "
                                                "reproduce the official weights' results; pass "
                                                "backbone.positions=consistent to change it")},
}


def check_known_file(path: Path, digest: str, *, skip: bool = False) -> None:
    """Refuse an official file (by name) whose SHA-256 is not the published one."""
    want = KNOWN_FILES.get(path.name)
    if want is not None and digest != want and not skip:
        raise AvgkitError(
            f"{path} has SHA-256 {digest}, but the official {path.name} has {want}: download it again (a partial or "
            f"altered file gives wrong results), or pass --skip-hash-check to convert this file on purpose"
        )


def _format_defaults(source: str, overrides: list[str]) -> tuple[list[str], dict[str, Any]]:
    given = {o.partition("=")[0].strip() for o in overrides}
    extra, notes = [], {}
    for key, (value, why) in FORMAT_DEFAULTS.get(source, {}).items():
        if key not in given:
            extra.append(f"{key}={value}")
            notes[key] = {"value": value, "why": why}
    return extra, notes


def convert_checkpoint(
    path: str | Path,
    source: str,
    recipe: Any,
    out_dir: str | Path,
    *,
    tokenizer_weights: str | Path | None = None,
    tokenizer_format: str | None = None,
    overrides: Iterable[str] = (),
    skip_hash_check: bool = False,
) -> Path:
    """Convert an external checkpoint file into an avgkit checkpoint directory.

    ``recipe`` is a :class:`~avgkit.recipe.Recipe` or a recipe name/path (with
    ``overrides``). Writes ``recipe.yaml``, ``model.safetensors`` (when the file holds a
    model), ``tokenizer.safetensors`` (when it carries tokenizer weights or
    ``tokenizer_weights`` is given) and ``convert.json``; ``avgkit sample`` and
    :func:`avgkit.api.load` read the result. The file is read without executing code.
    """
    from avgkit import __version__
    from avgkit.io import sha256_file
    from avgkit.plugins import get_manager
    from avgkit.recipe import Recipe, load_recipe
    from avgkit.runs.loading import write_checkpoint_dir

    path = Path(path)
    if Path(out_dir).exists():  # before reading a multi-GB file, not after
        raise AvgkitError(f"{out_dir} already exists; choose another --out or delete it first")
    defaults: dict[str, Any] = {}
    if not isinstance(recipe, Recipe):
        extra, defaults = _format_defaults(source, list(overrides))
        recipe = load_recipe(str(recipe), [*extra, *overrides])
        for key in defaults:  # only where the recipe's component has such an option
            role, _, option = key.partition(".")
            from avgkit.build import resolve_config
            from avgkit.plugins import get_registry

            if option not in type(resolve_config(get_registry(), role, getattr(recipe, role))).model_fields:
                raise AvgkitError(f"format {source!r} needs {key}, which {role} {getattr(recipe, role).name!r} "
                                  f"does not have; convert with a recipe whose {role} matches the format")
    source_sha = sha256_file(path) if path.exists() else None
    if source_sha is not None:
        check_known_file(path, source_sha, skip=skip_hash_check)
    tok_sha = sha256_file(tokenizer_weights) if tokenizer_weights is not None and Path(tokenizer_weights).exists() \
        else None
    if tok_sha is not None:
        check_known_file(Path(tokenizer_weights), tok_sha, skip=skip_hash_check)  # type: ignore[arg-type]
    state = load_external_state_dict(path)
    tok_state = load_external_state_dict(tokenizer_weights) if tokenizer_weights is not None else None
    result = convert_state_dict(
        state, source, recipe, tokenizer_state_dict=tok_state, tokenizer_source=tokenizer_format, what=str(path)
    )
    stored = building_recipe(recipe) if result.tokenizer_state is not None else recipe
    info = {
        "source_file": str(path),
        "source_sha256": source_sha,
        "source_sha256_known": KNOWN_FILES.get(path.name),
        "format_defaults": defaults,
        "format": source,
        "converted_by": result.converted_by,
        "tokenizer_file": str(tokenizer_weights) if tokenizer_weights is not None else None,
        "tokenizer_sha256": tok_sha,
        "recipe": recipe.name,
        "tensors": {"source": len(state), "model": len(result.model_state or {}),
                    "tokenizer": len(result.tokenizer_state or {})},
        "avgkit_version": __version__,
        "plugins": {name: info.version for name, info in get_manager().infos.items()},
    }
    return write_checkpoint_dir(
        out_dir, stored, model_state=result.model_state, tokenizer_state=result.tokenizer_state, info=info
    )
