"""Strict state-dict checks: missing, unexpected and mis-shaped keys named in one line.

Shared by checkpoint loading (:mod:`avgkit.runs.loading`) and external conversion
(:mod:`avgkit.convert`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from avgkit.errors import AvgkitError


def key_list(keys: list[str], cap: int = 5) -> str:
    """The first ``cap`` keys, and how many more."""
    return ", ".join(keys[:cap]) + (f" ... (+{len(keys) - cap} more)" if len(keys) > cap else "")


def state_dict_problems(module: torch.nn.Module, state_dict: Mapping[str, Tensor], prefix: str = "") -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``state_dict`` for ``module``, by name.

    ``prefix`` is put before every key named (``"backbone."`` for a part of a model).
    Works on the meta device: only names and shapes are compared.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            problems.append(f"{len(keys)} {label} key(s): {key_list([prefix + k for k in keys])}")
    if shapes:
        shown = [f"{prefix}{k} (checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)})" for k in shapes]
        problems.append(f"{len(shapes)} mis-shaped key(s): {key_list(shown, 3)}")
    return problems


def check_state_dict(module: torch.nn.Module, state_dict: Mapping[str, Tensor], what: str) -> None:
    """Strict comparison of keys and shapes, as one line naming what is wrong."""
    problems = state_dict_problems(module, state_dict)
    if problems:
        raise AvgkitError(f"{what} does not match: " + "; ".join(problems) + " (is the preset/config right?)")


def refused_load_message(path: object, err: BaseException) -> str:
    """One line for a ``torch.load(..., weights_only=True)`` failure: unsafe content or a damaged file.

    The safe loader refuses both a pickle that names Python objects (loading it could run
    code) and bytes that are no pickle at all; the fix differs, so the message does too.
    """
    import re

    text = str(err)
    # torch words it several ways: "Unsupported global: GLOBAL x", "unsupported GLOBAL x whose
    # module ... is blocked", "x was not an allowed global"
    found = re.search(r"\bGLOBAL ([\w.]+)", text) or re.search(r"([\w.]+) was not an allowed global", text)
    if found:
        return (f"refusing to load {path}: it holds a Python object ({found.group(1)}) beyond tensors and plain "
                f"containers, and loading it could run code; re-save only its state dict, preferably as safetensors")
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\n", text + "\n", re.S)
    reason = " ".join((detail.group(1) if detail else text.splitlines()[0] if text else type(err).__name__).split())
    return f"cannot read {path} as safetensors or a PyTorch checkpoint (damaged, or another format?): {reason[:160]}"
