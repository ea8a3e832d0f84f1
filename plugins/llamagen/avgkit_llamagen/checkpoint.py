"""Trainer checkpoints: tensors in one safetensors file, everything else in a JSON beside it.

``checkpoints/step-00001000.safetensors`` holds every module's state dict and every
optimizer's tensors (prefixed ``name/``); ``step-00001000.json`` holds the step, the RNG
states, the optimizers' param groups and the configs. Both are written atomically and
the JSON last, so a checkpoint counts only once its JSON exists; older ones are pruned.
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

from avgkit.io import atomic_write_json, save_safetensors

from .errors import VQError

_NAME = re.compile(r"step-(\d{8})\.json$")


def _paths(folder: Path, step: int) -> tuple[Path, Path]:
    stem = folder / f"step-{step:08d}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def completed_steps(folder: Path) -> list[int]:
    """Steps of the complete checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    steps = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and _paths(folder, int(m.group(1)))[0].is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def rng_state() -> dict[str, Any]:
    def enc(t: Tensor) -> str:
        return base64.b64encode(t.numpy().tobytes()).decode()

    state: dict[str, Any] = {"torch": enc(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [enc(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    def dec(s: str) -> Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)

    torch.set_rng_state(dec(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([dec(s) for s in state["cuda"]])


def save_checkpoint(
    folder: Path,
    step: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, Optimizer],
    info: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` and delete all but the newest ``keep`` complete ones."""
    tensors: dict[str, Tensor] = {}
    for name, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"{name}/{k}"] = v
    opt_info: dict[str, Any] = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, entry in sd["state"].items():
            for k, v in entry.items():
                if isinstance(v, Tensor):
                    tensors[f"{name}/{idx}/{k}"] = v
                else:
                    scalars.setdefault(str(idx), {})[k] = v
        opt_info[name] = {"param_groups": sd["param_groups"], "scalars": scalars}
    folder.mkdir(parents=True, exist_ok=True)
    tensor_path, json_path = _paths(folder, step)
    save_safetensors(tensor_path, tensors)
    atomic_write_json(json_path, {**info, "step": step, "rng": rng_state(), "optimizers": opt_info}, indent=1, sort_keys=True)
    for old in completed_steps(folder)[:-keep] if keep > 0 else []:
        for p in _paths(folder, old)[::-1]:  # JSON first: the checkpoint stops counting at once
            p.unlink(missing_ok=True)
    return tensor_path


def checkpoint_info(folder: Path, step: int) -> dict[str, Any]:
    """The JSON half of checkpoint ``step`` (configs, step, RNG, optimizer groups)."""
    return json.loads(_paths(folder, step)[1].read_text())


def load_checkpoint(
    folder: Path, step: int, modules: dict[str, nn.Module], optimizers: dict[str, Optimizer]
) -> dict[str, Any]:
    """Restore modules, optimizers and RNG from checkpoint ``step``; returns its JSON."""
    tensor_path = _paths(folder, step)[0]
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
    set_rng_state(info["rng"])
    return info
