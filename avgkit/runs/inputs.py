"""What a run was made from, by content hash: ``inputs.json`` in the run directory.

A training run records, when it starts::

    recipe       sha256 of the recipe.yaml it wrote
    tokenizer    the tokenizer weights: the run's own copy (``tokenizer.safetensors`` in
                 the run folder, or the file itself when it already lives there), where it
                 came from, its sha256, size and modification time
    code_store   the zarr store's path and content fingerprint (computed once, when the
                 store was finished, and kept in its metadata)
    data_source  the recipe's data.source and the source's description
    text_encoder a frozen text encoder's identity (kind, sha256 of its files, max_length,
                 dtype, width), when the run trains on its stored caption features

A resume compares the tokenizer, the codes and the text encoder with the record and refuses other ones;
sampling loads the tokenizer from the run's own copy and checks it. Files are compared
cheaply: same size and modification time means unchanged; otherwise the file is
hashed again and its hash compared. A mismatch is one line naming both hashes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from avgkit.errors import AvgkitError
from avgkit.io import sha256_file
from avgkit.runs.layout import INPUTS_FILE, RECIPE_FILE, TOKENIZER_FILE

#: The run's own copy of its tokenizer weights (the same name a converted checkpoint uses).
RUN_TOKENIZER_FILE = TOKENIZER_FILE


def short(digest: str) -> str:
    """``sha256:0123456789abcdef`` (the first 16 hex digits) for messages."""
    return "sha256:" + digest.removeprefix("sha256:")[:16]


def file_record(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    st = path.stat()
    return {"sha256": sha256_file(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def current_sha256(path: str | Path, record: dict[str, Any]) -> str:
    """The file's sha256, taken from ``record`` when size and modification time still match."""
    path = Path(path)
    st = path.stat()
    if st.st_size == record.get("size") and st.st_mtime_ns == record.get("mtime_ns"):
        return str(record["sha256"])
    return sha256_file(path)


def read_inputs(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / INPUTS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AvgkitError(f"{path} is unreadable ({err}); restore it from a backup or retrain the run") from None


def check_recipe(run_dir: Path, inputs: dict[str, Any]) -> None:
    """Refuse a run whose recipe.yaml was edited after it was trained."""
    want = (inputs.get("recipe") or {}).get("sha256")
    path = run_dir / RECIPE_FILE
    if want and path.is_file():
        have = sha256_file(path)
        if have != want:
            raise AvgkitError(
                f"{path} was edited after training ({short(have)} now, {short(want)} when trained); restore it "
                f"(earlier versions are kept as recipe.previous-N.yaml) and pass sampler settings as options instead"
            )


def pinned_tokenizer(run_dir: Path, inputs: dict[str, Any]) -> Path | None:
    """The run's own tokenizer weights, checked against their recorded hash (``None``: none recorded)."""
    rec = inputs.get("tokenizer")
    if not rec:
        return None
    path = run_dir / rec["file"]
    if not path.is_file():
        raise AvgkitError(
            f"the tokenizer weights of run {run_dir} ({path}) are missing; put them back, or pass --tokenizer PATH "
            f"(tokenizer= in the Python API) to sample with a given weights file"
        )
    have = current_sha256(path, rec)
    if have != rec["sha256"]:
        raise AvgkitError(
            f"tokenizer weights {path} are not the ones run {run_dir} was trained with ({short(have)} now, "
            f"{short(rec['sha256'])} when trained); put the original back, or pass --tokenizer PATH to sample with "
            f"other weights on purpose"
        )
    return path


__all__ = ["INPUTS_FILE", "RUN_TOKENIZER_FILE", "check_recipe", "current_sha256", "file_record", "pinned_tokenizer",
           "read_inputs", "short"]
