"""avgkit.io: atomic writes leave either the old file or the new one, never a temporary."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from avgkit.io import atomic_write, atomic_write_json, atomic_write_text, save_safetensors, sha256_file


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_written_files_get_a_plain_file_mode(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("x")
    path = atomic_write_json(tmp_path / "sub" / "r.json", {"b": 1, "a": [2]}, sort_keys=True)
    assert path.read_text() == json.dumps({"a": [2], "b": 1}, indent=2) + "\n"
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_safetensors_and_sha256(tmp_path):
    t = torch.arange(6.0).reshape(2, 3).t()  # not contiguous
    path = save_safetensors(tmp_path / "w.safetensors", {"t": t}, {"k": "v"})
    assert torch.equal(load_file(str(path))["t"], t)
    (tmp_path / "abc").write_bytes(b"abc")
    assert sha256_file(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_identical_tensors_and_metadata_give_identical_bytes(tmp_path):
    import subprocess
    import sys

    from safetensors import safe_open

    state = {f"layer{i}.w": torch.full((3, 2), float(i)) for i in range(6)}
    state["half"] = torch.ones(5, dtype=torch.bfloat16)
    state["flag"] = torch.tensor(True)
    meta = {f"key{i}": str(i) for i in range(8)}
    paths = [save_safetensors(tmp_path / f"{n}.safetensors", state, meta) for n in range(4)]
    # another process too (a hash map's order may depend on a per-process seed)
    code = ("import sys, torch; from avgkit.io import save_safetensors\n"
            "state = {f'layer{i}.w': torch.full((3, 2), float(i)) for i in range(6)}\n"
            "state['half'] = torch.ones(5, dtype=torch.bfloat16); state['flag'] = torch.tensor(True)\n"
            "save_safetensors(sys.argv[1], dict(reversed(list(state.items()))), "
            "{f'key{i}': str(i) for i in reversed(range(8))})\n")
    other = tmp_path / "other.safetensors"
    subprocess.run([sys.executable, "-c", code, str(other)], check=True)
    blobs = {p.read_bytes() for p in [*paths, other]}
    assert len(blobs) == 1
    loaded = load_file(str(paths[0]))
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    with safe_open(str(paths[0]), framework="pt") as f:
        assert f.metadata() == meta
