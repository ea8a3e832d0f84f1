"""External checkpoints: safe loading and the conversion helpers plugins share.

A checkpoint is read without executing code (safetensors, or ``torch.load`` with
``weights_only=True``), then every plugin converts the part it owns through the
``avgkit_convert_checkpoint`` hook, answering with :class:`ConvertedWeights`. Keys no
plugin consumed are reported by name.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import torch
from torch import Tensor

from avgkit.errors import AvgkitError


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
        raise AvgkitError(
            f"{path} holds more than tensors and was refused by the safe loader ({str(err).splitlines()[0]}); "
            f"re-save it as safetensors or as a plain dict of tensors"
        ) from None
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


def check_state_dict(module: torch.nn.Module, state_dict: Mapping[str, Tensor], what: str) -> None:
    """Strict comparison of keys and shapes, as one line naming what is wrong."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            problems.append(f"{len(keys)} {label} key(s): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} mis-shaped key(s), e.g. {k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        )
    if problems:
        raise AvgkitError(f"{what} does not match: " + "; ".join(problems) + " (is the preset/config right?)")
