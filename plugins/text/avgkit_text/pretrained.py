"""Frozen pretrained text encoders through ``transformers``, from a local folder only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from avgkit.errors import AvgkitError
from avgkit.io import sha256_file

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


def folder_digest(path: str, recorded: dict[str, Any] | None = None) -> tuple[str, dict[str, list[int]]]:
    """``("sha256:<hex>", files)``: a hash of every file of the encoder's folder (config, weights,
    tokenizer; hidden files and folders left out) and each file's ``[size, mtime_ns]``.

    ``recorded`` (an earlier identity with ``sha256`` and ``files``): when no file changed
    size or modification time, its hash is taken as it is, so large weights are hashed once.
    """
    folder = _folder(path)
    files = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            st = p.stat()
            files[rel.as_posix()] = [st.st_size, st.st_mtime_ns]
    if recorded and recorded.get("files") == files and recorded.get("sha256"):
        return str(recorded["sha256"]), files
    digest = hashlib.sha256()
    for rel in files:
        digest.update(f"{rel}\0{sha256_file(folder / rel)}\n".encode())
    return f"sha256:{digest.hexdigest()}", files


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
