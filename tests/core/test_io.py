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
