"""Frozen pretrained text encoders through ``transformers``, from a local folder only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from avgkit.errors import AvgkitError

HINT = "pip install 'avgkit-text[hf]'"


def _folder(path: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise AvgkitError(f"text encoder folder {folder} holds no config.json; point conditioner.path at a local "
                          f"folder saved with save_pretrained (model and tokenizer)")
    return folder


def feature_width(kind: str, path: str) -> int:
    """Width of the encoder's features, read from its config.json (no model is loaded)."""
    cfg = json.loads((_folder(path) / "config.json").read_text())
    if kind == "clip" and "text_config" in cfg:
        cfg = cfg["text_config"]
    width = cfg.get("d_model") or cfg.get("hidden_size")
    if not isinstance(width, int):
        raise AvgkitError(f"{path}/config.json names no d_model or hidden_size; is it a {kind} text encoder?")
    return width


def load_pretrained(kind: str, path: str) -> tuple[Any, Any]:
    """(model in eval mode with gradients off, tokenizer), loaded with ``local_files_only``."""
    folder = _folder(path)
    try:
        import transformers
    except ImportError:
        raise AvgkitError(f"text encoder {kind!r} needs transformers; {HINT}") from None
    if kind == "t5":
        model = transformers.T5EncoderModel.from_pretrained(folder, local_files_only=True)
    elif kind == "clip":
        model = transformers.CLIPTextModel.from_pretrained(folder, local_files_only=True)
    else:  # pragma: no cover - the config's Literal rules it out
        raise AvgkitError(f"unknown pretrained text encoder {kind!r}; use t5 or clip")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any tokenizer loading problem is the same fix
        raise AvgkitError(f"no tokenizer in {folder} ({type(err).__name__}); save the encoder's tokenizer there "
                          f"with save_pretrained") from None
    model.requires_grad_(False).eval()
    return model, tok
