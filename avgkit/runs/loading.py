"""Checkpoint directories that sampling reads: training runs and converted checkpoints.

Two layouts are accepted, both safetensors + YAML only (nothing is ever unpickled):

* a training run directory written by ``avgkit train`` (see :mod:`avgkit.runs.checkpoint`)::

      recipe.yaml
      checkpoints/step-XXXXXX/{model,ema}.safetensors + COMPLETE

  The newest complete checkpoint is used unless a step is asked for; a
  ``checkpoints/step-XXXXXX`` folder may also be named directly.
* a converted checkpoint directory written by ``avgkit convert``
  (:func:`write_checkpoint_dir`)::

      recipe.yaml
      model.safetensors        backbone.* and conditioner.* (an ARModel state dict)
      tokenizer.safetensors    optional: the tokenizer's own weights
      convert.json             where the weights came from

Components are rebuilt from the stored recipe through the registry and the weights are
loaded with strict key and shape checks (:func:`avgkit.state_dicts.check_state_dict`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from avgkit.errors import AvgkitError
from avgkit.io import atomic_write_json, atomic_write_text, fsync_path
from avgkit.recipe import Recipe, read_yaml, validate_recipe
from avgkit.runs import checkpoint as train_ckpt
from avgkit.runs.layout import CONVERT_INFO_FILE, EMA_FILE, MODEL_FILE, RECIPE_FILE, TOKENIZER_FILE
from avgkit.state_dicts import check_state_dict


@dataclass(frozen=True)
class CheckpointRef:
    """Where the files of one checkpoint are (nothing read yet but the folder listing)."""

    root: Path
    kind: Literal["run", "converted"]
    recipe_path: Path
    model_path: Path | None
    ema_path: Path | None = None
    tokenizer_path: Path | None = None
    step: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.root),
            "kind": self.kind,
            "step": self.step,
            "model": str(self.model_path) if self.model_path else None,
            "ema": str(self.ema_path) if self.ema_path else None,
            "tokenizer": str(self.tokenizer_path) if self.tokenizer_path else None,
        }


def _optional(path: Path) -> Path | None:
    return path if path.is_file() else None


def _from_step_dir(step_dir: Path, run_dir: Path) -> CheckpointRef:
    match = train_ckpt._STEP_DIR.match(step_dir.name)
    if not (step_dir / train_ckpt.MARKER).is_file():
        raise AvgkitError(
            f"{step_dir} has no {train_ckpt.MARKER} marker (an interrupted write); pick another step or the run directory"
        )
    return CheckpointRef(
        root=run_dir,
        kind="run",
        recipe_path=run_dir / RECIPE_FILE,
        model_path=step_dir / MODEL_FILE,
        ema_path=_optional(step_dir / EMA_FILE),
        step=int(match.group(1)) if match else None,
    )


def resolve_checkpoint(path: str | Path, step: int | None = None) -> CheckpointRef:
    """Find the recipe and weight files of a run directory, a step folder or a converted directory."""
    path = Path(path)
    if not path.exists():
        raise AvgkitError(f"checkpoint {path} not found; pass a training run directory or an `avgkit convert` output")
    if path.is_file():
        raise AvgkitError(
            f"{path} is a file; pass the directory holding {RECIPE_FILE} (external checkpoints are converted first "
            f"with `avgkit convert`)"
        )
    if train_ckpt._STEP_DIR.match(path.name) and path.parent.name == "checkpoints":
        if step is not None:
            raise AvgkitError(f"{path} is already one checkpoint; drop --step or pass the run directory")
        return _from_step_dir(path, path.parent.parent)
    if not (path / RECIPE_FILE).is_file():
        raise AvgkitError(f"{path} has no {RECIPE_FILE}; pass a training run directory or an `avgkit convert` output")
    ckpt_root = path / "checkpoints"
    if ckpt_root.is_dir():
        found = train_ckpt.list_checkpoints(ckpt_root)
        if not found:
            raise AvgkitError(f"run {path} has no complete checkpoint yet; train longer or wait for the first one")
        if step is None:
            return _from_step_dir(found[-1].path, path)
        chosen = [c for c in found if c.step == step]
        if not chosen:
            steps = ", ".join(str(c.step) for c in found)
            raise AvgkitError(f"run {path} has no complete checkpoint at step {step} (it has: {steps})")
        return _from_step_dir(chosen[0].path, path)
    if step is not None:
        raise AvgkitError(f"{path} is a converted checkpoint with a single set of weights; drop --step")
    model = _optional(path / MODEL_FILE)
    tokenizer = _optional(path / TOKENIZER_FILE)
    if model is None and tokenizer is None:
        raise AvgkitError(f"{path} holds neither {MODEL_FILE} nor a checkpoints/ folder; is it a checkpoint directory?")
    return CheckpointRef(path, "converted", path / RECIPE_FILE, model, _optional(path / EMA_FILE), tokenizer)


def read_recipe(ref: CheckpointRef) -> Recipe:
    return validate_recipe(read_yaml(ref.recipe_path), str(ref.recipe_path))


# ----------------------------------------------------------------------------- weights
def read_weights(path: Path) -> dict[str, Tensor]:
    """A safetensors file written by avgkit (tied entries restored)."""
    tensors, _ = train_ckpt.load_tensors(path, fix="pass a checkpoint written by avgkit train or avgkit convert")
    return tensors


def load_strict(module: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Load ``state`` into ``module`` after the one-line key and shape check."""
    check_state_dict(module, state, what)
    module.load_state_dict(dict(state), strict=True)


def tokenizer_weights_option(config: Any) -> str | None:
    """The tokenizer's ``weights`` option (the convention tokenizers with weight files follow)."""
    return getattr(config, "weights", None) if "weights" in type(config).model_fields else None


def _resolve_tokenizer_file(recipe: Recipe, ref: CheckpointRef) -> Recipe:
    """Point the tokenizer at its weights: the checkpoint's own file, or a path relative to it.

    With ``tokenizer.safetensors`` present the recipe's ``weights`` option is cleared (the
    weights are loaded from the checkpoint instead); a relative ``weights`` path that does
    not exist from the working directory is tried relative to the checkpoint directory.
    """
    from avgkit.build import resolve_config
    from avgkit.plugins import get_registry

    cfg = resolve_config(get_registry(), "tokenizer", recipe.tokenizer)
    if "weights" not in type(cfg).model_fields:
        return recipe
    current = tokenizer_weights_option(cfg)
    options = dict(recipe.tokenizer.options)
    if ref.tokenizer_path is not None:
        options["weights"] = None
    elif current and not Path(current).is_absolute() and not Path(current).exists():
        for candidate in _moved_candidates(Path(current), recipe.run_dir, ref.root):
            if candidate.exists():
                options["weights"] = str(candidate)
                break
    else:
        return recipe
    tok = recipe.tokenizer.model_copy(update={"options": options})
    return recipe.model_copy(update={"tokenizer": tok})


def _moved_candidates(path: Path, run_dir: Path, root: Path) -> list[Path]:
    """Where a relative path written while training may be now that we look from elsewhere.

    A path inside the run's own folder (``runs/x/tokenizer.safetensors`` for a run trained
    as ``runs/x``) follows the folder wherever it is now; else the folder the run was
    trained from, then the checkpoint folder and its parent.
    """
    out = []
    if not run_dir.is_absolute():
        if path.is_relative_to(run_dir):
            out.append(root / path.relative_to(run_dir))
        here, n = root.resolve().parts, len(run_dir.parts)
        if len(here) > n and here[-n:] == run_dir.parts:
            out.append(Path(*here[:-n]) / path)
    return [*out, root / path, root.parent / path]


@dataclass
class LoadedCheckpoint:
    """Components with their weights loaded, and what was loaded from where."""

    recipe: Recipe
    components: Any  # avgkit.build.Components
    ref: CheckpointRef
    used_ema: bool
    #: the tokenizer's weights file (the checkpoint's own, or the recipe's), if it has one
    tokenizer_weights: Path | None = None

    @property
    def weights_path(self) -> Path | None:
        return self.ref.ema_path if self.used_ema else self.ref.model_path


def _want_ema(ref: CheckpointRef, recipe: Recipe, ema: bool | str) -> bool:
    if ema == "auto":
        return ref.ema_path is not None and recipe.eval.use_ema
    if ema and ref.ema_path is None:
        raise AvgkitError(f"{ref.root} has no EMA weights ({EMA_FILE}); load with ema=False (--no-ema)")
    return bool(ema)


def _tokenizer_fields(recipe: Recipe) -> set[str]:
    from avgkit.plugins import get_registry

    return set(get_registry().get("tokenizer", recipe.tokenizer.name).config.model_fields)


def _with_tokenizer_weights(recipe: Recipe, weights: Path) -> Recipe:
    options = {**recipe.tokenizer.options, "weights": str(weights)}
    return recipe.model_copy(update={"tokenizer": recipe.tokenizer.model_copy(update={"options": options})})


def load_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    ema: bool | str = "auto",
    step: int | None = None,
    tokenizer: str | Path | None = None,
) -> LoadedCheckpoint:
    """Rebuild a checkpoint's components from its recipe and load its weights (strictly).

    ``ema``: ``True``/``False``, or ``"auto"`` (EMA weights when present and the recipe's
    ``eval.use_ema`` allows). A training run's tokenizer is its own pinned copy, checked
    against the hash recorded in ``inputs.json``; ``tokenizer`` names another weights
    file on purpose (it replaces the run's or the converted checkpoint's own).
    """
    from avgkit.build import ARModel, build
    from avgkit.runs.inputs import check_recipe, pinned_tokenizer, read_inputs

    ref = resolve_checkpoint(path, step)
    if ref.model_path is None:
        raise AvgkitError(f"{ref.root} holds tokenizer weights only; convert a model checkpoint to sample from it")
    recipe = read_recipe(ref)
    use_ema = _want_ema(ref, recipe, ema)
    inputs = read_inputs(ref.root) if ref.kind == "run" else None
    if inputs is not None:
        check_recipe(ref.root, inputs)
    if tokenizer is not None:
        tokenizer = Path(tokenizer)
        if not tokenizer.is_file():
            raise AvgkitError(f"tokenizer weights {tokenizer} not found; pass an existing weights file")
        if "weights" not in _tokenizer_fields(recipe):
            raise AvgkitError(f"tokenizer {recipe.tokenizer.name!r} takes no weights file; drop --tokenizer")
        ref = CheckpointRef(ref.root, ref.kind, ref.recipe_path, ref.model_path, ref.ema_path, None, ref.step)
        recipe = _with_tokenizer_weights(recipe, tokenizer)
    elif inputs is not None and (pinned := pinned_tokenizer(ref.root, inputs)) is not None:
        recipe = _with_tokenizer_weights(recipe, pinned)
    else:
        recipe = _resolve_tokenizer_file(recipe, ref)
    comps = build(recipe, device="cpu")
    tok_file = ref.tokenizer_path or tokenizer_weights_option(comps.configs["tokenizer"])
    weights = ref.ema_path if use_ema else ref.model_path
    assert weights is not None  # _want_ema is true only with an EMA file
    load_strict(ARModel(comps.backbone, comps.conditioner), read_weights(weights), f"weights {weights}")
    if ref.tokenizer_path is not None:
        load_strict(comps.tokenizer, read_weights(ref.tokenizer_path), f"tokenizer weights {ref.tokenizer_path}")
    for module in (comps.tokenizer, comps.backbone, comps.conditioner):
        module.to(device).eval()
    return LoadedCheckpoint(recipe, comps, ref, use_ema, Path(tok_file) if tok_file else None)


# ----------------------------------------------------------------------------- writing
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete ``.<name>.tmp-<pid>`` folders whose writer is gone (a killed convert); returns them."""
    import re

    removed = []
    for entry in folder.glob(".*.tmp-*"):
        m = re.fullmatch(r"\..+\.tmp-(\d+)", entry.name)
        if m and entry.is_dir() and not _alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def write_checkpoint_dir(
    out_dir: str | Path,
    recipe: Recipe,
    *,
    model_state: Mapping[str, Tensor] | None,
    tokenizer_state: Mapping[str, Tensor] | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write a converted checkpoint directory atomically (a temporary folder, then a rename).

    Refuses to overwrite: an existing ``out_dir`` is an error naming the fix.
    """
    out = Path(out_dir)
    if out.exists():
        raise AvgkitError(f"{out} already exists; choose another --out or delete it first")
    if model_state is None and tokenizer_state is None:
        raise AvgkitError("nothing to write: no model or tokenizer weights were converted")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        meta = {"format": "avgkit-converted"}
        if model_state is not None:
            train_ckpt.save_tensors(tmp / MODEL_FILE, model_state, meta)
        if tokenizer_state is not None:
            train_ckpt.save_tensors(tmp / TOKENIZER_FILE, tokenizer_state, meta)
        atomic_write_text(tmp / RECIPE_FILE, recipe.to_yaml())
        atomic_write_json(tmp / CONVERT_INFO_FILE, dict(info or {}), default=str)
        fsync_path(tmp)
        os.replace(tmp, out)
        fsync_path(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = [
    "CheckpointRef",
    "LoadedCheckpoint",
    "load_checkpoint",
    "load_strict",
    "read_recipe",
    "read_weights",
    "resolve_checkpoint",
    "write_checkpoint_dir",
]
