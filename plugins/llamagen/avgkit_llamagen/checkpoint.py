"""The tokenizer trainer's checkpoints: avgkit's trainer checkpoints, plus the older layout.

Checkpoints are written with :func:`avgkit.runs.checkpoint.save_state`:
``checkpoints/step-XXXXXX/`` holding one safetensors file per module (``model``, ``ema``,
``disc``) and per optimizer (``opt``, ``disc_opt``), ``trainer.json`` (step, RNG states,
configs) and ``COMPLETE`` last. Work folders of earlier versions kept everything in
``step-XXXXXXXX.safetensors`` + ``step-XXXXXXXX.json``; they are still read (and
resumed from), never written.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from avgkit.runs import checkpoint as ckpt

from .errors import VQError

_LEGACY = re.compile(r"step-(\d{8})\.json$")


def _legacy_paths(folder: Path, step: int) -> tuple[Path, Path]:
    stem = folder / f"step-{step:08d}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _legacy_steps(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _LEGACY.match(p.name))
                  and _legacy_paths(folder, int(m.group(1)))[0].is_file())


def completed_steps(folder: Path) -> list[int]:
    """Steps of the complete checkpoints in ``folder`` (either layout), oldest first."""
    return sorted({c.step for c in ckpt.list_checkpoints(folder)} | set(_legacy_steps(folder)))


def save_checkpoint(folder: Path, step: int, modules: dict[str, nn.Module], optimizers: dict[str, Optimizer],
                    info: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` (avgkit's layout) and keep the newest ``keep`` complete ones."""
    path = ckpt.save_state(folder, step, modules=modules, optimizers=optimizers,
                           state={**info, "step": step, "rng": ckpt.capture_rng()}, keep_last=keep)
    for old in _legacy_steps(folder):  # an older layout's checkpoints are superseded now
        for p in _legacy_paths(folder, old)[::-1]:
            p.unlink(missing_ok=True)
    return path


def checkpoint_info(folder: Path, step: int) -> dict[str, Any]:
    """The JSON of checkpoint ``step``: configs, step, RNG."""
    new = folder / ckpt.step_dir_name(step)
    if (new / ckpt.MARKER).is_file():
        return ckpt.read_trainer_state(new, f"delete {new} to resume from the checkpoint before it")
    return json.loads(_legacy_paths(folder, step)[1].read_text())


def load_checkpoint(folder: Path, step: int, modules: dict[str, nn.Module],
                    optimizers: dict[str, Optimizer]) -> dict[str, Any]:
    """Restore modules, optimizers and RNG from checkpoint ``step``; returns its JSON."""
    new = folder / ckpt.step_dir_name(step)
    if (new / ckpt.MARKER).is_file():
        info = ckpt.load_state(new, modules=modules, optimizers=optimizers)
        ckpt.restore_rng(info["rng"])
        return info
    return _load_legacy(folder, step, modules, optimizers)


def _load_legacy(folder: Path, step: int, modules: dict[str, nn.Module], optimizers: dict[str, Optimizer]
                 ) -> dict[str, Any]:
    tensor_path = _legacy_paths(folder, step)[0]
    info = checkpoint_info(folder, step)
    tensors = safetensors.torch.load_file(str(tensor_path))
    for name, module in modules.items():
        prefix = f"{name}/"
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(own, strict=True)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise VQError(f"checkpoint {tensor_path} does not fit the {name!r} being trained: {first}") from None
    for name, opt in optimizers.items():
        meta = info["optimizers"][name]
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            parts = k.split("/")
            if len(parts) == 3 and parts[0] == name:
                state.setdefault(int(parts[1]), {})[parts[2]] = v
        for idx, scalars in meta["scalars"].items():
            state.setdefault(int(idx), {}).update(scalars)
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})

    def dec(s: str) -> Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)

    torch.set_rng_state(dec(info["rng"]["torch"]))
    if "cuda" in info["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([dec(s) for s in info["rng"]["cuda"]])
    return info
