"""Extraction: codes equal the tokenizer's, corrupt images reported, crash-safe resume."""

from __future__ import annotations

import io
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import PREPARE_KW, NoiseSource, PatchMeanTokenizer
from PIL import Image

from avgkit.data import CodeDataset, CodeStore, ImageFolderSource, StoreError, prepare
from avgkit.data.prepare import _Progress
from avgkit.data.sources import ten_crop

HELPER = Path(__file__).with_name("data_helpers.py")
REPO = Path(__file__).resolve().parents[2]


def _encode_all(source, tok, n):
    return torch.cat([tok.encode(source[i][0][None]) for i in range(n)]).numpy()


def test_codes_equal_direct_encoding(tmp_path):
    src, tok = NoiseSource(n=40), PatchMeanTokenizer()
    report = prepare(src, tok, tmp_path / "s.zarr", weights="random:7", tokenizer_name="patch", **PREPARE_KW)
    assert (report.total, report.encoded, report.resumed, report.num_skipped) == (40, 40, 0, 0)
    store = CodeStore.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.read_codes(), _encode_all(src, tok, 40))
    np.testing.assert_array_equal(store.read_labels(), np.arange(40) % 3)
    m = store.meta
    assert (m.tokenizer, m.weights, m.vocab_size, m.grid, m.resolution, m.augmentation) == (
        "patch",
        "random:7",
        16,
        (4, 4),
        8,
        "none",
    )
    assert m.class_counts == [14, 13, 13] and m.source == src.describe()
    # a rerun finds everything done and encodes nothing
    again = prepare(src, tok, tmp_path / "s.zarr", weights="random:7", tokenizer_name="patch", **PREPARE_KW)
    assert (again.encoded, again.resumed) == (0, 40)


def test_ten_crop_codes(tmp_path):
    src, tok = NoiseSource(n=6), PatchMeanTokenizer(image_size=16)
    prepare(src, tok, tmp_path / "t.zarr", augment="tencrop", **PREPARE_KW)
    store = CodeStore.open(tmp_path / "t.zarr")
    codes = store.read_codes()
    assert codes.shape == (6, 10, 64) and store.meta.num_views == 10
    assert store.meta.augmentation == "tencrop" and store.meta.resolution == 16
    for i in range(6):
        views = ten_crop(src.at_size(17)[i][0], 16)  # loaded at int(16 * 1.1) = 17
        np.testing.assert_array_equal(codes[i], tok.encode(views).numpy())
    assert not np.array_equal(codes[:, 0], codes[:, 3])  # the crops differ


def test_settings_mismatch_refuses_resume(tmp_path):
    prepare(NoiseSource(n=20), PatchMeanTokenizer(), tmp_path / "s.zarr", **PREPARE_KW)
    with pytest.raises(StoreError, match="vocab_size: 16 there, 32 now"):
        prepare(NoiseSource(n=20), PatchMeanTokenizer(levels=32), tmp_path / "s.zarr", **PREPARE_KW)
    with pytest.raises(StoreError, match="number of items"):
        prepare(NoiseSource(n=21), PatchMeanTokenizer(), tmp_path / "s.zarr", **PREPARE_KW)


def test_corrupt_image_reported_and_excluded(tmp_path):
    root = tmp_path / "imgs"
    for k, cls in enumerate(["cat", "dog"]):
        (root / cls).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(np.full((12, 10, 3), 40 * k + 20 * j, np.uint8)).save(root / cls / f"{j}.png")
    (root / "dog" / "1.png").write_bytes(b"\x89PNG truncated")
    src = ImageFolderSource(root, 8)
    tok = PatchMeanTokenizer(channels=3)
    report = prepare(src, tok, tmp_path / "s.zarr", **PREPARE_KW)
    assert report.num_skipped == 1 and report.encoded == 6
    assert report.skipped[0].path.endswith("dog/1.png") and report.skipped[0].index == 4
    assert "dog/1.png" in str(report)
    store = CodeStore.open(tmp_path / "s.zarr")
    assert store.meta.skipped[0]["path"].endswith("dog/1.png")
    assert store.meta.class_counts == [3, 2]
    ds = CodeDataset(tmp_path / "s.zarr")
    assert len(ds) == 5 and 4 not in ds.indices.tolist()
    # a rerun still reports it
    again = prepare(src, tok, tmp_path / "s.zarr", **PREPARE_KW)
    assert [s.index for s in again.skipped] == [4] and again.encoded == 0


def test_progress_plain_lines_off_terminal():
    out = io.StringIO()
    p = _Progress(total=10, initial=2, enabled=True, stream=out, interval=0.0)
    p.update(3)
    p.update(5)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("prepare: 5/10 items (50.0%)") and lines[-1].startswith("prepare: 10/10")


def _run_helper(store: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HELPER), str(store), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _assert_same_store(a: Path, b: Path) -> None:
    sa, sb = CodeStore.open(a), CodeStore.open(b)
    np.testing.assert_array_equal(sa.read_codes(), sb.read_codes())
    np.testing.assert_array_equal(sa.read_labels(), sb.read_labels())
    assert sa.done_mask().all() and sb.done_mask().all()
    assert sa.meta.to_dict() == sb.meta.to_dict()


def test_resume_after_sigkill_equals_clean_run(tmp_path):
    clean = tmp_path / "clean.zarr"
    prepare(NoiseSource(), PatchMeanTokenizer(), clean, **PREPARE_KW)
    n_chunks = CodeStore.open(clean).num_chunks  # 200 items / 16 = 13

    # 1) killed right after a chunk's codes are durable but before its done flag
    crashed = tmp_path / "crashed.zarr"
    proc = _run_helper(crashed, "--die-before-done", "3")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    assert out.split() == ["chunk", "0", "chunk", "1", "chunk", "2"]
    half = CodeStore.open(crashed, mode="r", verify=False)
    assert half.missing_chunks() == list(range(3, n_chunks))
    assert (crashed / "codes" / "c" / "3" / "0").is_file()  # written, yet not done

    # 2) killed at a random moment of a slowed run, resuming the crashed store
    proc = _run_helper(crashed, "--delay", "0.05")
    rng = random.Random()
    stop_after = rng.randint(1, 4)  # committed chunks seen before the kill
    seen = 0
    while seen < stop_after:
        line = proc.stdout.readline()
        assert line.startswith("chunk"), proc.stderr.read()
        seen += 1
    time.sleep(rng.uniform(0.0, 0.1))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    left = CodeStore.open(crashed, mode="r", verify=False).missing_chunks()
    assert 0 < len(left) < n_chunks - 3

    report = prepare(NoiseSource(), PatchMeanTokenizer(), crashed, **PREPARE_KW)
    assert report.encoded == sum(e - s for s, e in map(half.chunk_bounds, left))
    assert report.encoded + report.resumed == 200
    assert not list(crashed.rglob("*.partial"))
    _assert_same_store(crashed, clean)


def test_a_signal_stops_after_the_chunk_being_encoded_and_a_rerun_continues(tmp_path):
    import os

    from avgkit.runtime.stop import Interrupted

    src, tok = NoiseSource(n=40), PatchMeanTokenizer()

    def interrupt(chunk):
        if chunk == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match=r"stopped by SIGTERM with 16 of 40 images encoded into .*s.zarr; run the "
                                          r"same command again"):
        prepare(src, tok, tmp_path / "s.zarr", weights="random:7", tokenizer_name="patch", on_chunk=interrupt,
                **PREPARE_KW)
    report = prepare(src, tok, tmp_path / "s.zarr", weights="random:7", tokenizer_name="patch", **PREPARE_KW)
    assert (report.resumed, report.encoded) == (16, 24)
    np.testing.assert_array_equal(CodeStore.open(tmp_path / "s.zarr").read_codes(), _encode_all(src, tok, 40))
    assert CodeStore.open(tmp_path / "s.zarr").meta.fingerprint.startswith("sha256:")
