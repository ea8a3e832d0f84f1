"""Throughput of the code loader on a synthetic store (CPU only).

Builds a store of random 256-token items (vocabulary 16384, uint16 on disk), then
times ``CodeLoader`` batches in three modes:

* ``memory``: the whole code array in RAM (what stores of this size get by default);
* ``zarr-cached``: chunk reads through zarr with a cache that holds the store;
* ``zarr-uncached``: chunk reads with a cache far smaller than the store, so a shuffled
  batch of 256 reads about 256 chunks (the worst case for stores too big for RAM).

Each mode first draws ``--warmup`` batches (worker start-up, first reads), then counts
tokens over ``--seconds`` of steady iteration across epochs. The loader must deliver
at least 1M tokens/s in ``memory`` mode with 2 workers at batch 256.

    python benchmarks/data_loader.py            # writes benchmarks/results/data_loader_cpu.json
    python benchmarks/data_loader.py --smoke --out FILE   # a tiny store, a fraction of a second per mode
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avgkit.data import CodeDataset, CodeLoader, CodeStore, StoreMeta

TARGET_TOKENS_PER_S = 1_000_000
RESULTS = Path(__file__).parent / "results"
# --smoke: a tiny store and short timings (every mode, workers included); sizes given explicitly win
SMOKE = {"items": 256, "tokens": 16, "vocab": 64, "batch_size": 32, "seconds": 0.2, "warmup": 2}


def machine_info() -> dict[str, object]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import zarr

    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        # other processes share the cores; a high load average means noisy numbers
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def build_store(path: Path, items: int, tokens: int, vocab: int) -> CodeStore:
    meta = StoreMeta(
        tokenizer="synthetic",
        vocab_size=vocab,
        grid=(16, tokens // 16),
        resolution=256,
        class_names=[str(c) for c in range(1000)],
        source={"kind": "synthetic", "items": items},
        weights="random:0",
    )
    store = CodeStore.create(path, meta, items)
    rng = np.random.default_rng(0)
    for c in range(store.num_chunks):
        s, e = store.chunk_bounds(c)
        store.write_chunk(c, rng.integers(0, vocab, (e - s, tokens)), rng.integers(0, 1000, e - s), durable=False)
    store.finalize()
    return store


def time_loader(
    dataset: CodeDataset, *, batch_size: int, workers: int, seconds: float, warmup_batches: int
) -> dict[str, float]:
    loader = CodeLoader(dataset, batch_size, seed=0, num_workers=workers, persistent_workers=workers > 0)
    batches = iter(_endless(loader))
    t0 = time.perf_counter()
    for _ in range(warmup_batches):  # worker start-up and first reads
        next(batches)
    startup = time.perf_counter() - t0
    tokens, n = 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tokens += next(batches).codes.numel()
        n += 1
    elapsed = time.perf_counter() - t0
    return {
        "tokens_per_s": tokens / elapsed,
        "batches_per_s": n / elapsed,
        "warmup_s": startup,
        "timed_s": elapsed,
    }


def _endless(loader: CodeLoader):
    while True:  # epochs follow each other, as in training
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=20, help="batches before timing starts")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/data_loader_cpu.json")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: checks that the script runs (its numbers mean nothing)")
    args = parser.parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    if args.out is None:
        folder = Path(tempfile.gettempdir()) / "avgkit-benchmark-smoke" if args.smoke else RESULTS
        args.out = folder / "data_loader_cpu.json"
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = build_store(Path(tmp) / "codes.zarr", args.items, args.tokens, args.vocab)
        build_s = time.perf_counter() - t0
        chunk_bytes = store.chunk_items * args.tokens * store.codes.dtype.itemsize
        modes = {
            "memory": dict(in_memory=True),
            "zarr-cached": dict(in_memory=False, cache_bytes=4 * store.codes_nbytes()),
            "zarr-uncached": dict(in_memory=False, cache_bytes=16 * chunk_bytes),
        }
        results = {}
        for name, kw in modes.items():
            ds = CodeDataset(store.path, **kw)
            results[name] = time_loader(
                ds, batch_size=args.batch_size, workers=args.workers, seconds=args.seconds, warmup_batches=args.warmup
            )
            r = results[name]
            print(
                f"{name:>14}: {r['tokens_per_s'] / 1e6:7.2f} M tokens/s ({r['batches_per_s']:.1f} batches/s; "
                f"warm-up {r['warmup_s']:.1f} s)",
                flush=True,
            )

    report = {
        "benchmark": "data_loader",
        "setup": {
            "items": args.items,
            "tokens_per_item": args.tokens,
            "vocab_size": args.vocab,
            "codes_dtype": str(store.codes.dtype),
            "chunk_items": store.chunk_items,
            "store_mb": round(store.codes_nbytes() / 2**20, 1),
            "batch_size": args.batch_size,
            "num_workers": args.workers,
            "timed_seconds_per_mode": args.seconds,
            "warmup_batches": args.warmup,
            "store_build_s": round(build_s, 2),
        },
        "results": {k: {m: round(v, 3) for m, v in r.items()} for k, r in results.items()},
        "target_tokens_per_s": TARGET_TOKENS_PER_S,
        "meets_target": results["memory"]["tokens_per_s"] >= TARGET_TOKENS_PER_S,
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}; target {'met' if report['meets_target'] else 'NOT met'}")


if __name__ == "__main__":
    main()
