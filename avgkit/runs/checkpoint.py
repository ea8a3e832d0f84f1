"""Run directories and checkpoints: safetensors + JSON only, written atomically.

Layout of a run directory::

    recipe.yaml            the resolved recipe
    plugins.json           installed plugins and versions
    metrics.jsonl          one JSON record per logged step
    loss.png               loss curve (updated at checkpoints and at the end)
    samples/step-XXXXXX.png  periodic sample grids (train.sample_every)
    checkpoints/step-XXXXXX/
        model.safetensors      ARModel state dict (tied tensors stored once)
        ema.safetensors        EMA weights, same keys (train.ema)
        optimizer.safetensors  optimizer state tensors; param groups in its metadata
        trainer.json           step, loader position, schedule, RNG states, ...
        COMPLETE               written last: only such checkpoints are resumed from

A checkpoint is written into ``step-XXXXXX.tmp/``, every file fsynced, the folder
renamed, then ``COMPLETE`` written and fsynced; a crash at any point leaves either a
complete checkpoint or one that is ignored. Nothing is ever unpickled. Sharded
(``train.parallel: fsdp``) checkpoints follow the same protocol: :mod:`avgkit.runs.sharded`.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from avgkit.errors import AvgkitError
from avgkit.io import atomic_write_json, atomic_write_text, fsync_path, save_safetensors
from avgkit.runs.layout import (
    COMPLETE_MARKER,
    EMA_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    TRAINER_FILE,
    step_dir_name,
)

MARKER = COMPLETE_MARKER
_STEP_DIR = re.compile(r"^step-(\d+)$")
_ALIASES_KEY = "avgkit.aliases"


class CheckpointError(AvgkitError):
    """A checkpoint that cannot be read: names the file and the fix."""


# ----------------------------------------------------------------------------- tensors
def _storage_key(t: Tensor) -> tuple[Any, ...]:
    return (t.device, t.untyped_storage().data_ptr())


def dedupe_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors safetensors can store, plus ``alias -> stored name`` for tied entries.

    Entries that are the very same view of one storage (a tied head) are stored once;
    other storage sharing (slices of one buffer) is broken by cloning.
    """
    out: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    owners: dict[tuple[Any, ...], list[str]] = {}
    for name, t in state.items():
        t = t.detach()
        key = _storage_key(t)
        twin = next(
            (
                n
                for n in owners.get(key, [])
                if out[n].shape == t.shape
                and out[n].stride() == t.stride()
                and out[n].storage_offset() == t.storage_offset()
                and out[n].dtype == t.dtype
            ),
            None,
        )
        if twin is not None:
            aliases[name] = twin
            continue
        if key in owners or not t.is_contiguous() or t.numel() * t.element_size() != t.untyped_storage().nbytes():
            t = t.clone().contiguous()
        owners.setdefault(_storage_key(t), []).append(name)
        out[name] = t.contiguous()
    return out, aliases


def save_tensors(path: Path, state: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``state`` atomically, tied entries stored once (their aliases in the metadata)."""
    tensors, aliases = dedupe_state_dict(state)
    meta = dict(metadata or {})
    meta[_ALIASES_KEY] = json.dumps(aliases)
    save_safetensors(path, tensors, meta)


def load_tensors(path: Path, *, fix: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors (aliases filled back in) and metadata; a one-line error names ``fix``."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; {fix}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        aliases = json.loads(meta.get(_ALIASES_KEY, "{}"))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint file {path} is unreadable ({err}); {fix}") from None
    for alias, name in aliases.items():
        tensors[alias] = tensors[name]
    return tensors, meta


def load_module_state(module: nn.Module, path: Path, *, fix: str) -> None:
    """Load a safetensors state dict into ``module`` (strict; tied parameters stay tied)."""
    tensors, _ = load_tensors(path, fix=fix)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(s.strip() for s in first[:3])[:300]
        raise CheckpointError(
            f"checkpoint file {path} does not fit this model ({detail}); resume with the recipe that wrote it"
        ) from None


# ----------------------------------------------------------------------------- optimizer
def check_fits(module: nn.Module, path: Path, *, fix: str) -> None:
    """Refuse a weights file whose tensor names or shapes do not fit ``module``.

    Reads only the file's header, so a run can be checked (on the meta device) before
    anything of it is touched.
    """
    from safetensors import safe_open

    from avgkit.state_dicts import state_dict_problems

    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; {fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            aliases = json.loads(dict(f.metadata() or {}).get(_ALIASES_KEY, "{}"))
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint file {path} is unreadable ({err}); {fix}") from None
    shapes.update({alias: shapes[name] for alias, name in aliases.items() if name in shapes})
    problems = state_dict_problems(module, {k: torch.empty(v, device="meta") for k, v in shapes.items()})
    if problems:
        raise CheckpointError(f"checkpoint file {path} does not fit this recipe's model ({'; '.join(problems)}); "
                              f"resume with the recipe that wrote it (the run's recipe.yaml)")


def _portable_group(group: Mapping[str, Any]) -> dict[str, Any]:
    """A parameter group as JSON, without how the step ran: a graph-captured step's tensor lr becomes its value and
    ``capturable`` is left to the resuming run (it needs the parameters on a GPU)."""
    out = dict(group)
    if isinstance(out.get("lr"), Tensor):
        out["lr"] = float(out["lr"])
    if out.get("capturable"):
        out["capturable"] = False
    return out


def optimizer_to_safetensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, str]]:
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [_portable_group(g) for g in sd["param_groups"]]
    return tensors, {"param_groups": json.dumps(groups), "scalars": json.dumps(scalars)}


def optimizer_from_safetensors(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], meta: Mapping[str, str], path: Path, fix: str
) -> None:
    try:
        groups = json.loads(meta["param_groups"])
        scalars = json.loads(meta.get("scalars", "{}"))
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint file {path} has no optimizer parameter groups; {fix}") from None
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in scalars.items():
        state.setdefault(int(idx), {}).update(entry)
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"checkpoint file {path} does not fit this model's optimizer ({err}); resume with the recipe that wrote it"
        ) from None


# ----------------------------------------------------------------------------- RNG
def _b64(t: Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def capture_rng(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every random state the loop may touch, as JSON (no pickle)."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the global RandomState is an MT19937
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch_cpu": _b64(torch.get_rng_state()),
        "numpy": {
            "kind": np_state[0],
            "keys": np_state[1].tolist(),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
        "generators": {k: _b64(g.get_state()) for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch_cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(_unb64(state["torch_cpu"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    for name, g in (generators or {}).items():
        if name in state.get("generators", {}):
            g.set_state(_unb64(state["generators"][name]))
    cuda = state.get("torch_cuda")
    if cuda and torch.cuda.is_available():
        states = [_unb64(s) for s in cuda]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# ----------------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path


def list_checkpoints(ckpt_root: Path) -> list[CheckpointInfo]:
    """Complete checkpoints (with their marker), oldest first; partial ones are ignored."""
    if not ckpt_root.is_dir():
        return []
    found = []
    for entry in ckpt_root.iterdir():
        m = _STEP_DIR.match(entry.name)
        if m and entry.is_dir() and (entry / MARKER).is_file():
            found.append(CheckpointInfo(int(m.group(1)), entry))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(ckpt_root: Path) -> CheckpointInfo | None:
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def remove_partial(ckpt_root: Path) -> None:
    """Delete leftovers of interrupted writes (``*.tmp`` folders, folders without a marker)."""
    if not ckpt_root.is_dir():
        return
    for entry in ckpt_root.iterdir():
        if entry.is_dir() and (
            entry.name.endswith(".tmp") or (_STEP_DIR.match(entry.name) and not (entry / MARKER).exists())
        ):
            shutil.rmtree(entry, ignore_errors=True)


def save_state(
    ckpt_root: Path,
    step: int,
    *,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    state: Mapping[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Write ``ckpt_root/step-XXXXXX`` atomically: ``<name>.safetensors`` per module and per
    optimizer, ``trainer.json`` holding ``state``, ``COMPLETE`` last; prune to ``keep_last``.

    Any trainer's checkpoint (avgkit's own, a plugin's tokenizer trainer) is written this
    way: safetensors and JSON only, a crash leaves a complete checkpoint or an ignored one.
    """
    names = [*modules, *optimizers]
    if len(set(names)) != len(names):
        raise ValueError(f"module and optimizer names must differ: {names}")
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / (final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    meta = {"format": "avgkit-checkpoint", "step": str(step)}
    for name, module in modules.items():
        save_tensors(tmp / f"{name}.safetensors", module.state_dict(), meta)
    for name, optimizer in optimizers.items():
        opt_tensors, opt_meta = optimizer_to_safetensors(optimizer)
        save_tensors(tmp / f"{name}.safetensors", opt_tensors, {**meta, **opt_meta})
    atomic_write_json(tmp / TRAINER_FILE, dict(state), indent=1)
    publish(tmp, final, step, keep_last)
    return final


def publish(tmp: Path, final: Path, step: int, keep_last: int | None) -> None:
    """Move a fully written ``tmp`` checkpoint folder to ``final``, mark it complete, prune the old ones.

    Every rename is synced before the marker is written, so a crash leaves either a
    complete, marked checkpoint or an unmarked folder that loading ignores.
    """
    fsync_path(tmp)
    if final.exists():  # an unmarked folder of the same step from an interrupted run
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(final.parent)
    atomic_write_text(final / MARKER, f"{step}\n")
    fsync_path(final)
    if keep_last is not None:
        prune(final.parent, keep_last)


def load_state(
    ckpt: Path,
    *,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    fix: str | None = None,
) -> dict[str, Any]:
    """Load a :func:`save_state` checkpoint into ``modules`` and ``optimizers``; returns its state."""
    fix = fix or f"delete {ckpt} to resume from the previous checkpoint, or start afresh without --resume"
    state = read_trainer_state(ckpt, fix)
    for name, module in modules.items():
        load_module_state(module, ckpt / f"{name}.safetensors", fix=fix)
    for name, optimizer in (optimizers or {}).items():
        path = ckpt / f"{name}.safetensors"
        tensors, meta = load_tensors(path, fix=fix)
        optimizer_from_safetensors(optimizer, tensors, meta, path, fix)
    return state


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: Mapping[str, Any],
    ema: nn.Module | None = None,
    keep_last: int | None = None,
) -> Path:
    """The AR trainer's checkpoint: ``model``, ``ema`` and ``optimizer`` files (see :func:`save_state`)."""
    modules = {"model": model} if ema is None else {"model": model, "ema": ema}
    return save_state(ckpt_root, step, modules=modules, optimizers={"optimizer": optimizer}, state=trainer_state,
                      keep_last=keep_last)


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints (marker first)."""
    for old in list_checkpoints(ckpt_root)[:-keep_last]:
        (old.path / MARKER).unlink(missing_ok=True)  # from here on it is an ignored partial
        shutil.rmtree(old.path, ignore_errors=True)


def read_trainer_state(ckpt: Path, fix: str) -> dict[str, Any]:
    path = ckpt / TRAINER_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; {fix}")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint file {path} is unreadable ({err}); {fix}") from None


def load_checkpoint(
    ckpt: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    ema: nn.Module | None = None,
) -> dict[str, Any]:
    """Load weights (and optimizer / EMA) from a checkpoint folder; returns trainer.json."""
    fix = f"delete {ckpt} to resume from the previous checkpoint, or start afresh without --resume"
    state = read_trainer_state(ckpt, fix)
    load_module_state(model, ckpt / MODEL_FILE, fix=fix)
    if ema is not None:
        ema_path = ckpt / EMA_FILE
        if ema_path.exists():
            load_module_state(ema, ema_path, fix=fix)
        else:  # EMA switched on for a resumed run: start it from the weights
            ema.load_state_dict(model.state_dict())
    if optimizer is not None:
        path = ckpt / OPTIMIZER_FILE
        tensors, meta = load_tensors(path, fix=fix)
        optimizer_from_safetensors(optimizer, tensors, meta, path, fix)
    return state


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Load ``model.safetensors`` / ``ema.safetensors`` (or a checkpoint folder) into ``model``."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    load_module_state(model, path, fix="pass a model.safetensors written by avgkit train")
