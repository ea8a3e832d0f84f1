"""Loading: random access, determinism, mid-epoch resume, DDP sharding, workers."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from avgkit.data import CodeDataset, CodeLoader, CodeStore, EpochSampler, IncompleteStoreError, StoreMeta
from avgkit.errors import AvgkitError

N, T, A = 103, 5, 3
SKIP = 17  # store index of an unreadable image


def _make_store(path, views=A, n=N, chunk_items=16, complete=True):
    meta = StoreMeta(
        tokenizer="toy",
        vocab_size=1000,
        grid=(1, T),
        resolution=8,
        class_names=["a", "b", "c", "d"],
        source={"kind": "synthetic"},
        augmentation="tencrop" if views == 10 else ("flip" if views == 2 else "none"),
        num_views=views,
    )
    store = CodeStore.create(path, meta, n, chunk_items=chunk_items)
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 1000, (n, views, T) if views > 1 else (n, T))
    labels = rng.integers(0, 4, n)
    labels[SKIP] = -1
    for c in range(store.num_chunks if complete else store.num_chunks - 1):
        s, e = store.chunk_bounds(c)
        store.write_chunk(c, codes[s:e], labels[s:e])
    return codes, labels


@pytest.fixture
def store(tmp_path):
    codes, labels = _make_store(tmp_path / "s.zarr")
    return tmp_path / "s.zarr", codes, labels


@pytest.mark.parametrize("in_memory", [True, False])
def test_random_access(store, in_memory):
    path, codes, labels = store
    ds = CodeDataset(path, in_memory=in_memory, cache_bytes=200)  # tiny cache: evictions happen
    assert ds.in_memory is in_memory
    assert len(ds) == N - 1 and SKIP not in ds.indices.tolist()
    for p in [0, 16, 17, 50, N - 2, 3]:
        i = ds.indices[p]
        c, y = ds[p]
        assert c.dtype == torch.int64 and y.dtype == torch.int64
        assert torch.equal(c, torch.from_numpy(codes[i, 0])) and int(y) == labels[i]
        for v in range(A):
            assert torch.equal(ds[(p, v)][0], torch.from_numpy(codes[i, v]))
    batch = ds.get_batch([(5, 2), (90, 1), (6, 0)])
    assert batch.codes.shape == (3, T)
    assert torch.equal(batch.codes[1], torch.from_numpy(codes[ds.indices[90], 1]))


def test_incomplete_store_is_refused(tmp_path):
    _make_store(tmp_path / "p.zarr", complete=False)
    with pytest.raises(IncompleteStoreError, match="re-run prepare"):
        CodeDataset(tmp_path / "p.zarr")


def test_sampler_determinism():
    def order(seed, epoch):
        s = EpochSampler(50, seed=seed, rank=0, world_size=1)
        s.set_epoch(epoch)
        return list(s)

    assert order(3, 0) == order(3, 0)
    assert sorted(order(3, 0)) == list(range(50))
    assert order(3, 0) != order(3, 1)
    assert order(3, 0) != order(4, 0)
    plain = EpochSampler(50, shuffle=False, rank=0, world_size=1)
    assert list(plain) == list(range(50))


def test_views_per_epoch():
    s = EpochSampler(200, num_views=10, seed=0, rank=0, world_size=1)
    e0 = list(s)
    assert e0 == list(s) and all(0 <= v < 10 for _, v in e0)
    assert len({v for _, v in e0}) == 10  # every view gets used
    s.set_epoch(1)
    e1 = dict(s)
    assert [e1[i] for i, _ in e0] != [v for _, v in e0]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_ddp_shards_cover_every_index_once(world_size):
    n = 60  # divisible by 1..4
    shards = [list(EpochSampler(n, seed=5, rank=r, world_size=world_size)) for r in range(world_size)]
    assert sorted(sum(shards, [])) == list(range(n))
    assert len({len(s) for s in shards}) == 1


@pytest.mark.parametrize("drop_last", [False, True])
def test_ddp_uneven_split(drop_last):
    n, ws = 10, 4
    shards = [list(EpochSampler(n, seed=0, rank=r, world_size=ws, drop_last=drop_last)) for r in range(ws)]
    counts = Counter(sum(shards, []))
    assert len({len(s) for s in shards}) == 1  # ranks stay in lockstep
    if drop_last:
        assert len(counts) == 8 and set(counts.values()) == {1}
    else:
        assert set(counts) == set(range(n)) and sum(counts.values()) == 12 and max(counts.values()) == 2


def _batches(loader, n=None):
    out = []
    for b in loader:
        out.append((b.codes.clone(), b.labels.clone()))
        if n is not None and len(out) == n:
            break
    return out


def _same(a, b):
    assert len(a) == len(b)
    for (ca, la), (cb, lb) in zip(a, b, strict=True):
        assert torch.equal(ca, cb) and torch.equal(la, lb)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_mid_epoch_resume_equals_uninterrupted(store, num_workers):
    path, _, _ = store
    ds = CodeDataset(path)
    kw = dict(seed=11, rank=0, world_size=1, num_workers=num_workers)
    full = CodeLoader(ds, 8, **kw)
    reference = _batches(full) + _batches(full)  # two epochs
    assert full.epoch == 2

    first = CodeLoader(ds, 8, **kw)
    head = _batches(first, 5)
    state = json.loads(json.dumps(first.state_dict()))  # plain JSON round trip
    assert state["epoch"] == 0 and state["position"] == 40

    resumed = CodeLoader(ds, 8, **kw)
    resumed.load_state_dict(state)
    assert len(resumed) == -(-(len(ds) - 40) // 8)  # batches left in the epoch
    tail = _batches(resumed) + _batches(resumed)
    _same(head + tail, reference)
    # epochs differ, and each covers every item once
    per_epoch = -(-len(ds) // 8)
    e0 = torch.cat([c for c, _ in reference[:per_epoch]])
    e1 = torch.cat([c for c, _ in reference[per_epoch:]])
    assert e0.shape == e1.shape and not torch.equal(e0, e1)


def test_resume_on_different_world_size(store):
    path, _, _ = store
    ds = CodeDataset(path)
    n = len(ds)
    two = [CodeLoader(ds, 4, seed=2, rank=r, world_size=2, shuffle=True) for r in range(2)]
    seen = []
    for loader in two:
        for b in _batches(loader, 3):
            seen.append(b)
    state = two[0].state_dict()
    assert state["position"] == 24
    three = [CodeLoader(ds, 4, seed=2, rank=r, world_size=3) for r in range(3)]
    for loader in three:
        loader.load_state_dict(state)
    rest = [b for loader in three for b in _batches(loader)]
    sampler = EpochSampler(n, num_views=A, seed=2, rank=0, world_size=1)
    keys = list(sampler)
    expected = ds.get_batch(keys).codes
    got = torch.cat([c for c, _ in seen + rest])
    # the first 24 and the remaining items: each item appears, none twice except padding
    as_rows = Counter(map(tuple, got.tolist()))
    assert set(as_rows) == set(map(tuple, expected.tolist()))
    assert sum(as_rows.values()) - n == (3 - (n - 24) % 3) % 3


def test_state_dict_guards_against_other_runs(store):
    path, _, _ = store
    loader = CodeLoader(CodeDataset(path), 4, seed=1, rank=0, world_size=1)
    with pytest.raises(AvgkitError, match="seed=2"):
        loader.load_state_dict({"epoch": 0, "position": 0, "seed": 2, "num_items": len(loader.dataset)})


@pytest.mark.parametrize("in_memory", [True, False])
def test_plain_dataloader_with_workers(store, in_memory):
    path, codes, labels = store
    ds = CodeDataset(path, in_memory=in_memory)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[7][0], ds[7][0])
    loader = DataLoader(ds, batch_size=16, num_workers=2, shuffle=False)
    got = torch.cat([c for c, _ in loader])
    idx = ds.indices
    assert torch.equal(got, torch.from_numpy(codes[idx, ds.default_view]))
