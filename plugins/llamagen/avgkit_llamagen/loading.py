"""Reading and writing tokenizer weights without executing code from the file.

Accepted inputs:

* safetensors (preferred; files written by :func:`save_weights` also carry the
  architecture, so :func:`load_tokenizer` needs no config);
* LlamaGen's released ``vq_ds16_c2i.pt`` (a torch pickle with the weights under
  ``"model"``) and plain torch state dicts, read with ``torch.load(weights_only=True)``,
  which refuses anything but tensors and plain containers;
* checkpoints that wrap the tokenizer under a prefix (AiM: ``vqvae.``; DDP:
  ``module.``), which is detected and stripped.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from avgkit.io import save_safetensors
from avgkit.state_dicts import refused_load_message

from .config import VQConfig
from .errors import VQError
from .vq_model import LlamaGenVQ

#: safetensors metadata key holding the :class:`VQConfig` as JSON.
CONFIG_METADATA_KEY = "avgkit.vq_config"
#: Entries a file may lack: LlamaGen models built without usage tracking have no buffer.
OPTIONAL_KEYS = frozenset({"quantize.codebook_used"})
#: How many names an error message lists before saying "and N more".
LIST_CAP = 5
_WRAPPER_KEYS = ("model", "state_dict", "ema")


def _is_safetensors(path: Path) -> bool:
    """Sniff the format: safetensors starts with an 8-byte header length then ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


def read_state_dict(path: str | Path, *, key: str | None = None) -> dict[str, Tensor]:
    """All tensors of a weights file as a flat ``name -> tensor`` dict on the CPU.

    A torch checkpoint that nests the weights (``{"model": {...}, "optimizer": ...}``)
    is unwrapped at ``key`` or, by default, the first of ``model``, ``state_dict``,
    ``ema`` it has.
    """
    path = Path(path)
    if not path.is_file():
        raise VQError(f"weights file {str(path)!r} not found; check the path")
    if _is_safetensors(path):
        try:
            return safetensors.torch.load_file(str(path))
        except (safetensors.SafetensorError, OSError, ValueError) as err:
            raise VQError(f"weights file {str(path)!r} is damaged or truncated ({err}); restore or re-create it "
                          f"(delete it to retrain when the recipe has a tokenizer.train: block)") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise VQError(refused_load_message(repr(str(path)), err)) from None
    except Exception as err:  # noqa: BLE001 - any other failure means the file is not a checkpoint
        raise VQError(f"cannot read {str(path)!r} as safetensors or a torch checkpoint: {err}") from None
    return _unwrap(obj, path, key)


def _unwrap(obj: object, path: Path, key: str | None) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping):
        raise VQError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict")
    if key is not None:
        if not isinstance(obj.get(key), Mapping):
            raise VQError(f"{str(path)!r} has no state dict under key {key!r}; its keys: {_names(list(obj))}")
        obj = obj[key]
    elif not all(isinstance(v, Tensor) for v in obj.values()):
        found = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if found is None:
            raise VQError(
                f"{str(path)!r} is not a flat state dict and has none of the keys {list(_WRAPPER_KEYS)}; "
                f"pass key=... naming the entry that holds the weights (its keys: {_names(list(obj))})"
            )
        obj = obj[found]
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise VQError(f"{str(path)!r}: entries {_names(bad)} are not tensors; this is not a weights dict")
    return dict(obj)


def _names(keys: list[str], cap: int = LIST_CAP) -> str:
    shown = ", ".join(str(k) for k in keys[:cap])
    return shown + (f" and {len(keys) - cap} more" if len(keys) > cap else "")


def strip_prefix(state: Mapping[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    """Keep the entries that belong to a model with ``expected`` keys, removing a wrapper prefix.

    The prefix (``vqvae.``, ``module.``, ...) is the one under which most expected
    keys are found; with no better match the dict is returned unchanged.
    """
    best, best_hits = "", len(expected.intersection(state))
    prefixes = {k[: k.index(".") + 1] for k in state if "." in k}
    for p in sorted(prefixes):
        hits = sum(1 for k in state if k.startswith(p) and k[len(p) :] in expected)
        if hits > best_hits:
            best, best_hits = p, hits
    if not best:
        return dict(state)
    return {k[len(best) :]: v for k, v in state.items() if k.startswith(best)}


def check_state_dict(state: Mapping[str, Tensor], model: nn.Module, source: str = "weights") -> None:
    """Raise one clear error if ``state`` does not fit ``model`` key for key and shape for shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and k not in OPTIONAL_KEYS]
    unexpected = [k for k in state if k not in own]
    misshaped = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            problems.append(f"{len(keys)} {what} key{'s' if len(keys) > 1 else ''}: {_names(keys)}")
    if problems:
        raise VQError(
            f"{source} do not match the tokenizer architecture: {'; '.join(problems)}; "
            f"pick the preset/config the checkpoint was trained with"
        )


def load_weights(model: LlamaGenVQ, path: str | Path, *, key: str | None = None) -> LlamaGenVQ:
    """Load a weights file into ``model`` after strict key and shape checks."""
    state = strip_prefix(read_state_dict(path, key=key), set(model.state_dict()))
    check_state_dict(state, model, source=f"weights in {str(path)!r}")
    model.load_state_dict(state, strict=False)
    return model


def save_weights(model: LlamaGenVQ, path: str | Path, state: Mapping[str, Tensor] | None = None) -> Path:
    """Write ``model``'s weights (or ``state``) as safetensors with its config in the metadata."""
    meta = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(model.config.architecture(), sort_keys=True)}
    return save_safetensors(path, state if state is not None else model.state_dict(), meta)


def read_config(path: str | Path) -> VQConfig | None:
    """The architecture stored by :func:`save_weights`, or ``None`` for other files."""
    path = Path(path)
    if not path.is_file() or not _is_safetensors(path):
        return None
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise VQError(f"weights file {str(path)!r} is damaged or truncated ({err}); restore or re-create it") from None
    raw = meta.get(CONFIG_METADATA_KEY)
    return VQConfig(**json.loads(raw), weights=str(path)) if raw else None


def load_tokenizer(path: str | Path, config: VQConfig | None = None) -> LlamaGenVQ:
    """Build a tokenizer from a weights file, taking the architecture from the file when stored there."""
    cfg = config or read_config(path)
    if cfg is None:
        raise VQError(f"{str(path)!r} does not record its architecture; pass a VQConfig (e.g. presets.preset('vq-16'))")
    return load_weights(LlamaGenVQ(cfg).eval(), path)


def convert_state_dict(state: Mapping[str, Tensor], config: VQConfig) -> dict[str, Tensor] | None:
    """The tokenizer's own entries of an external checkpoint (e.g. AiM's ``vqvae.*``), or ``None``."""
    with torch.device("meta"):
        reference = LlamaGenVQ(config).state_dict()
    expected = set(reference)
    own = strip_prefix(state, expected)
    if not expected.intersection(own):
        return None
    out = {k: v for k, v in own.items() if k in expected}
    for key in OPTIONAL_KEYS - set(out):  # usage statistics, absent from some releases: start empty
        out[key] = torch.zeros(reference[key].shape, dtype=reference[key].dtype)
    return out
