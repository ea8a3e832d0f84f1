"""The zarr code store: round trip, metadata, compatibility, missing chunks."""

from __future__ import annotations

import numpy as np
import pytest

from avgkit.data.store import (
    CodeStore,
    IncompatibleStoreError,
    IncompleteStoreError,
    MissingChunkError,
    StoreError,
    StoreMeta,
    codes_dtype,
    weights_id,
)
from avgkit.errors import AvgkitError


def _meta(**kw) -> StoreMeta:
    base = dict(
        tokenizer="toy",
        preset="tiny",
        weights="random:0",
        vocab_size=16384,
        grid=(2, 3),
        resolution=32,
        class_names=["a", "b", "c"],
        source={"kind": "synthetic"},
        augmentation="none",
        num_views=1,
    )
    base.update(kw)
    return StoreMeta(**base)


def _fill(store: CodeStore, chunks=None, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (len(store), store.num_tokens) if store.num_views == 1 else (len(store), store.num_views, store.num_tokens)
    codes = rng.integers(0, store.vocab_size, shape)
    labels = rng.integers(0, store.meta.num_classes, len(store))
    for c in range(store.num_chunks) if chunks is None else chunks:
        s, e = store.chunk_bounds(c)
        store.write_chunk(c, codes[s:e], labels[s:e])
    return codes, labels


def test_codes_dtype_is_smallest():
    assert [codes_dtype(v) for v in (2, 256, 257, 16384, 65536, 65537)] == [
        np.uint8,
        np.uint8,
        np.uint16,
        np.uint16,
        np.uint16,
        np.uint32,
    ]


def test_round_trip_and_metadata(tmp_path):
    path = tmp_path / "s.zarr"
    store = CodeStore.create(path, _meta(), 37, chunk_items=16)
    assert store.num_chunks == 3 and store.chunk_bounds(2) == (32, 37)
    codes, labels = _fill(store)
    labels[5] = -1  # an unreadable image
    store.write_chunk(0, codes[:16], labels[:16])
    store.finalize([{"index": 5, "path": "x/5.jpg", "reason": "broken"}])

    again = CodeStore.open(path)
    assert again.codes.dtype == np.uint16 and again.codes.shape == (37, 6)
    np.testing.assert_array_equal(again.read_codes(), codes)
    np.testing.assert_array_equal(again.read_labels(), labels)
    m = again.meta
    assert (m.tokenizer, m.preset, m.weights, m.vocab_size, m.grid, m.resolution) == (
        "toy",
        "tiny",
        "random:0",
        16384,
        (2, 3),
        32,
    )
    assert m.complete and m.class_names == ["a", "b", "c"] and m.format_version == 1
    assert m.class_counts == np.bincount(labels[labels >= 0], minlength=3).tolist()
    assert m.skipped == [{"index": 5, "path": "x/5.jpg", "reason": "broken"}]
    assert m.source == {"kind": "synthetic"}


def test_views_axis(tmp_path):
    store = CodeStore.create(tmp_path / "v.zarr", _meta(vocab_size=200, num_views=10, augmentation="tencrop"), 20)
    codes, _ = _fill(store)
    assert store.codes.dtype == np.uint8 and store.codes.shape == (20, 10, 6)
    np.testing.assert_array_equal(store.read_chunk(0, view=4), codes[:, 4])
    np.testing.assert_array_equal(store.read_chunk(0), codes)


def test_write_rejects_out_of_vocabulary_codes(tmp_path):
    store = CodeStore.create(tmp_path / "s.zarr", _meta(vocab_size=10), 4)
    with pytest.raises(StoreError, match=r"outside \[0, 10\)"):
        store.write_chunk(0, np.full((4, 6), 10), np.zeros(4))
    with pytest.raises(StoreError, match="shape"):
        store.write_chunk(0, np.zeros((3, 6)), np.zeros(3))


def test_check_compatible(tmp_path):
    store = CodeStore.create(tmp_path / "s.zarr", _meta(), 4)
    _fill(store)
    store.check_compatible(vocab_size=16384, num_tokens=6, tokenizer="toy", preset="tiny", resolution=32)
    with pytest.raises(IncompatibleStoreError, match=r"vocabulary size 16384 .* expects 8192; re-run prepare"):
        store.check_compatible(vocab_size=8192)
    with pytest.raises(IncompatibleStoreError, match=r"tokens per image 6 .* expects 256"):
        store.check_compatible(vocab_size=16384, num_tokens=256)
    with pytest.raises(IncompatibleStoreError, match="tokenizer 'toy'.*'llamagen-vq'"):
        store.check_compatible(tokenizer="llamagen-vq")
    with pytest.raises(IncompatibleStoreError, match="weights"):
        store.check_compatible(weights="sha256:abc")
    err = pytest.raises(IncompatibleStoreError, store.check_compatible, num_tokens=1).value
    assert isinstance(err, AvgkitError) and "\n" not in str(err)


def test_a_non_square_resolution_is_recorded_and_checked(tmp_path):
    """[H, W] sizes: stored as [32, 64], read back as (32, 64); a store of another size is refused in one line."""
    path = tmp_path / "s.zarr"
    store = CodeStore.create(path, _meta(grid=(4, 8), resolution=[32, 64]), 4)
    _fill(store)
    again = CodeStore.open(path)
    assert again.meta.resolution == (32, 64) and dict(again._group.attrs)["avgkit"]["resolution"] == [32, 64]
    assert "32x64px" in again.summary()
    again.check_compatible(num_tokens=32, resolution=(32, 64))
    again.check_compatible(resolution=[32, 64])
    for other, shown in (((64, 32), "64x32"), (32, "32"), ((32, 32), "32")):
        with pytest.raises(IncompatibleStoreError, match=rf"resolution 32x64 .* expects {shown}; re-run prepare"):
            again.check_compatible(num_tokens=32, resolution=other)
    err = pytest.raises(IncompatibleStoreError, again.check_compatible, resolution=(64, 32)).value
    assert "\n" not in str(err)
    # a square is its side whichever way it is written: an int store takes [32, 32]
    square = CodeStore.create(tmp_path / "q.zarr", _meta(resolution=[32, 32]), 4)
    assert square.meta.resolution == 32 and square.meta.to_dict()["resolution"] == 32
    _fill(square)
    CodeStore.open(tmp_path / "q.zarr").check_compatible(resolution=(32, 32))
    with pytest.raises(IncompatibleStoreError, match=r"resolution 32 .* expects 32x64"):
        CodeStore.open(tmp_path / "q.zarr").check_compatible(resolution=(32, 64))


def test_incomplete_store_and_missing_chunk(tmp_path):
    path = tmp_path / "s.zarr"
    store = CodeStore.create(path, _meta(), 40, chunk_items=16)
    _fill(store, chunks=[0, 2])
    with pytest.raises(IncompleteStoreError, match="16 of 40 items missing .*1 of 3 chunks.*re-run prepare"):
        CodeStore.open(path)
    partial = CodeStore.open(path, verify=False)
    assert partial.missing_chunks() == [1]
    partial.read_chunk(0)
    with pytest.raises(MissingChunkError, match="items 16..31"):
        partial.read_chunk(1)  # zarr alone would return zeros here
    with pytest.raises(MissingChunkError):
        partial.read_codes()


def test_deleted_chunk_file_is_an_error(tmp_path):
    path = tmp_path / "s.zarr"
    store = CodeStore.create(path, _meta(), 40, chunk_items=16)
    _fill(store)
    CodeStore.open(path)  # complete
    victim = path / "codes" / "c" / "1" / "0"
    assert victim.is_file()
    victim.unlink()
    with pytest.raises(IncompleteStoreError, match="16 of 40 items missing"):
        CodeStore.open(path)
    with pytest.raises(MissingChunkError, match="codes/c/1/0"):
        CodeStore.open(path, verify=False).read_chunk(1)


def test_create_refuses_existing_and_open_requires_store(tmp_path):
    CodeStore.create(tmp_path / "s.zarr", _meta(), 4)
    with pytest.raises(StoreError, match="already exists"):
        CodeStore.create(tmp_path / "s.zarr", _meta(), 4)
    with pytest.raises(StoreError, match="no code store"):
        CodeStore.open(tmp_path / "missing.zarr")


def test_weights_id(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert weights_id(f) == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
