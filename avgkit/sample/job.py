"""Sampling jobs: many images written in shards, resumable, split over ``torchrun`` ranks.

Layout of an output folder::

    job.json              what decides the images (weights hashes, labels, seed, sampler, the backbone's own
                          decoding settings such as its state's dtype, ...)
    shards/shard-00012.npz  images [12 * shard_size, ...) of the job, written atomically
    images/000123-class207.png   one PNG per image (unless disabled; 000123-prompt0.png for prompts)
    samples.npz           ADM format: arr_0 uint8 N x H x W x 3, arr_1 int64 labels
    grid.png              a labelled grid: the first images of the first classes
    sampling.json         every setting, the checkpoint and its hash, avgkit version, speed

A job from text prompts (a text-conditioned model) labels image ``i`` with the index
of its prompt in ``request.prompts``: the labels of ``samples.npz``, the PNG names and
the grid rows (captioned by the prompt) are prompt indices, and ``sampling.json``
lists the prompts.

Image ``i`` draws its random numbers from (seed, i) alone and is conditioned on label
``i`` alone, so shards are pure storage: rerunning the same command skips shards already
on disk and recomputes the rest. On the CPU the result is bit-identical whatever the
batch size or number of processes. On a GPU, matrix kernels round differently for other
batch shapes, so a job pins one decode width (the sampler's ``decode_width``; by default
the batch size of its first run, recorded in job.json): every batch is decoded in groups
of exactly that many images, and a resume with another ``--batch-size``, or on more GPUs,
feeds the kernels the same shapes. A resume that changes the device type or passes
another ``--decode-width`` gets equally valid but not identical images; a note says so.
Under ``torchrun`` the unfinished shards are dealt out round-robin over the ranks and
rank 0 merges them. A folder holding a different job is refused, not mixed.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avgkit.errors import AvgkitError
from avgkit.images import grid_selection, save_labelled_grid, save_pngs, to_uint8_hwc
from avgkit.io import atomic_write_json, sha256_file
from avgkit.runtime.distributed import DistEnv, barrier, broadcast_json
from avgkit.runtime.stop import Interrupted, StopSignals, signal_name
from avgkit.sample.groups import in_fixed_groups
from avgkit.sample.npz import Member, read_npz, write_npz
from avgkit.sample.progress import SampleProgress

JOB_FILE = "job.json"
SHARD_DIR = "shards"
IMAGES_DIR = "images"
SAMPLES_FILE = "samples.npz"
GRID_FILE = "grid.png"
RECORD_FILE = "sampling.json"
JOB_FORMAT = "avgkit-sampling-job/1"
#: Shards being written in the background while sampling goes on (bounds memory).
MAX_PENDING_WRITES = 2


@dataclass
class SampleRequest:
    """What to sample and how; ``sampler`` holds overrides of the recipe's sampler options."""

    labels: np.ndarray
    seed: int = 0
    sampler: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    shard_size: int | None = None
    precision: str = "fp32"
    write_png: bool = True
    grid_classes: int = 10
    grid_per_class: int = 8
    clean_shards: bool = False
    #: recorded only: how the labels were asked for
    classes_spec: str | None = None
    per_class: int | None = None
    #: text prompts: then ``labels`` are indices into this list
    prompts: list[str] | None = None


@dataclass
class JobResult:
    out_dir: Path
    num_images: int
    sampled: int
    images_per_s: float | None
    record: dict[str, Any]


def shard_path(out_dir: Path, shard: int) -> Path:
    return out_dir / SHARD_DIR / f"shard-{shard:05d}.npz"


def _labels_sha256(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def _weights_hashes(gen: Any) -> dict[str, str | None]:
    def digest(path: Path | None) -> str | None:
        return sha256_file(path) if path is not None and Path(path).is_file() else None

    return {"weights_sha256": digest(gen.weights_path), "tokenizer_sha256": digest(gen.tokenizer_weights)}


#: job.json key recording how the job was first run; compared only to warn, never to refuse
STARTED_WITH = "started_with"
#: sampler option that fixes the decoding shape (see the module docstring)
DECODE_WIDTH = "decode_width"
#: job.json key: the backbone's own decoding settings (``Backbone.decode_settings``)
DECODING = "decoding"


def _read_job(out_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(job.json of out_dir or None, error)``."""
    path = out_dir / JOB_FILE
    if not path.is_file():
        return None, None
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None, f"{path} is unreadable; delete {out_dir} or choose another --out"
    if not isinstance(old, dict):
        return None, f"{path} is not a sampling job record; delete {out_dir} or choose another --out"
    return old, None


def _identity_problem(out_dir: Path, old: dict[str, Any] | None, identity: dict[str, Any],
                      started_with: dict[str, Any]) -> tuple[str | None, str | None]:
    """Claim ``out_dir`` for this job (rank 0 only): ``(error, note)``.

    ``old`` is the folder's job.json, if any. The error says why the folder belongs to
    another job. The note warns when a resumed job runs with another device type or decode
    width than it started with: on GPUs the floating-point result of a batch depends on
    its shape, so the remaining shards are equally valid samples but not bit-identical to
    an uninterrupted run.
    """
    if old is not None:
        old = dict(old)
        before = old.pop(STARTED_WITH, {}) or {}
        if isinstance(old.get("sampler"), dict):  # records written when the width was part of the identity
            old["sampler"] = {k: v for k, v in old["sampler"].items() if k != DECODE_WIDTH}
        for key in sorted(set(old) | set(identity)):
            if key == DECODING and key not in old:
                return (f"{out_dir} holds a sampling job recorded before its decoding settings were (now "
                        f"{identity[key]!r}): finish it with the avgkit version that started it, or choose another "
                        f"--out or delete it"), None
            if old.get(key) != identity.get(key):
                return (f"{out_dir} holds a different sampling job ({key}: {old.get(key)!r} there, "
                        f"{identity.get(key)!r} now); choose another --out or delete it"), None
        changed = [f"{k} {before.get(k)} -> {v}" for k, v in started_with.items()
                   if k != "batch_size" and before.get(k, v) != v]
        note = None
        if changed and started_with.get("device_type") == "cuda":
            note = (f"note: resuming with {', '.join(changed)}; on a GPU the remaining images can differ in "
                    f"floating-point detail from an uninterrupted run (pass the original values to avoid this)")
        return None, note
    if (out_dir / SHARD_DIR).exists() or (out_dir / SAMPLES_FILE).exists():
        return f"{out_dir} holds samples without {JOB_FILE}; choose another --out or delete it", None
    if out_dir.is_dir() and any(out_dir.iterdir()):
        return f"{out_dir} is not empty and holds no sampling job; choose a new or empty --out", None
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / JOB_FILE, {**identity, STARTED_WITH: started_with}, indent=1)
    return None, None


def _job_sampler_options(gen: Any, request: SampleRequest,
                         old: dict[str, Any] | None) -> tuple[dict[str, Any], int | None]:
    """The request's sampler options with the decode width pinned for the whole job.

    An explicit width (``--decode-width`` or the recipe's) wins; otherwise the width the
    job started with, or, for a new job, its batch size (at most its image count).
    Samplers without the option are left alone. Also returns the width when it was taken
    from the job's first run.
    """
    options = dict(request.sampler)
    config = gen.sampler_config(**options)
    if DECODE_WIDTH not in type(config).model_fields or getattr(config, DECODE_WIDTH) is not None:
        return options, None
    before = ((old or {}).get(STARTED_WITH) or {}).get(DECODE_WIDTH)
    if isinstance(before, int) and before > 0:
        options[DECODE_WIDTH] = before
        return options, before
    options[DECODE_WIDTH] = min(request.batch_size, len(request.labels))  # no padding past the job's end
    return options, None


def _stop_group(env: DistEnv) -> Any:
    """A CPU process group for agreeing to stop (the sampling group may be NCCL)."""
    if not env.distributed:
        return None
    import torch.distributed as dist

    return dist.new_group(backend="gloo")


def _write_shard(out_dir: Path, shard: int, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 write_png: bool, kind: str = "class") -> None:
    # PNGs first: a shard file on disk means everything of that shard is complete
    if write_png:
        save_pngs(images, labels, indices, out_dir / IMAGES_DIR, kind)
    write_npz(shard_path(out_dir, shard), {"arr_0": images, "arr_1": labels, "arr_2": indices})


def _read_shard(out_dir: Path, shard: int, labels: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    path = shard_path(out_dir, shard)
    fix = f"delete {path} and rerun the same command to sample it again"
    try:
        data = read_npz(path)
    except FileNotFoundError:
        raise AvgkitError(f"shard {path} is missing; rerun the same command to sample it") from None
    except Exception as err:  # a damaged file: zip, npy header or pickle-free read failed
        raise AvgkitError(f"shard {path} is unreadable ({type(err).__name__}: {err}); {fix}") from None
    images = data.get("arr_0")
    want = (len(labels), *image_hw, 3)
    if images is None or images.dtype != np.uint8 or images.shape != want:
        got = None if images is None else (images.dtype, images.shape)
        raise AvgkitError(f"shard {path} holds {got}, expected uint8 {want}; {fix}")
    stored = data.get("arr_1")
    if stored is None or not np.array_equal(stored, labels):
        raise AvgkitError(f"shard {path} has other labels than this job; {fix}")
    return images


def merge_shards(out_dir: Path, labels: np.ndarray, shard_size: int, image_hw: tuple[int, int]) -> Path:
    """Stream every shard into ``samples.npz`` (ADM layout), checking each against the job."""
    n = len(labels)

    def chunks():
        for s in range(math.ceil(n / shard_size)):
            lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
            yield _read_shard(out_dir, s, labels[lo:hi], image_hw)

    return write_npz(out_dir / SAMPLES_FILE, [
        Member("arr_0", (n, *image_hw, 3), np.dtype(np.uint8), chunks()),
        Member("arr_1", (n,), np.dtype(np.int64), [labels.astype(np.int64)]),
    ])


def write_grid(out_dir: Path, labels: np.ndarray, shard_size: int, image_hw: tuple[int, int],
               max_classes: int, per_class: int, title: str | None = None,
               names: Sequence[str] | None = None) -> Path | None:
    """``grid.png`` from the first ``per_class`` images of the first ``max_classes`` classes,
    a row each, labelled with ``names[label]`` (the prompts of a prompt job) or the class id."""
    chosen = grid_selection(labels, max_classes, per_class)
    if len(chosen) == 0:
        return None
    images = []
    cache: dict[int, np.ndarray] = {}
    for i in chosen.tolist():
        s = i // shard_size
        if s not in cache:
            lo, hi = s * shard_size, min(len(labels), (s + 1) * shard_size)
            cache = {s: _read_shard(out_dir, s, labels[lo:hi], image_hw)}
        images.append(cache[s][i - s * shard_size])
    return save_labelled_grid(np.stack(images), labels[chosen], out_dir / GRID_FILE, title=title, class_names=names)


def _prompt_record(prompts: Sequence[str], captions: Sequence[str] | None) -> dict[str, Any]:
    """sampling.json's prompts (label ``i`` is ``prompts[i]``), and which were training captions
    when the run recorded its caption table."""
    record: dict[str, Any] = {"prompts": list(prompts)}
    if captions is not None:
        seen = set(captions)
        record["prompts_in_training"] = [p in seen for p in prompts]
    return record


def _timing(out_dir: Path, warmup_s: float, sampled: int, wall: float, rate: float | None) -> dict[str, Any]:
    """This run's timing; a rerun that sampled nothing keeps the speed measured before."""
    timing: dict[str, Any] = {"warmup_s": round(warmup_s, 3), "sampled_this_run": sampled, "wall_s": round(wall, 3),
                              "images_per_s": round(rate, 3) if rate else None}
    if sampled == 0:
        try:
            before = json.loads((out_dir / RECORD_FILE).read_text()).get("timing") or {}
        except (OSError, json.JSONDecodeError, AttributeError):
            before = {}
        if before.get("images_per_s"):
            timing["last_measured"] = {k: before[k] for k in ("sampled_this_run", "wall_s", "images_per_s") if k in before}
    return timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plugin_versions() -> dict[str, str]:
    from avgkit.plugins import get_manager

    return {name: info.version for name, info in get_manager().infos.items()}


def run_sample_job(
    gen: Any,
    out_dir: str | Path,
    request: SampleRequest,
    *,
    env: DistEnv | None = None,
    progress: bool = True,
    command: Sequence[str] | None = None,
) -> JobResult:
    """Sample ``request.labels`` with ``gen`` (an :class:`avgkit.api.Generator`) into ``out_dir``.

    Resumable and rank-aware (see the module docstring). Every rank returns; only rank 0
    merges and writes ``samples.npz``, ``grid.png`` and ``sampling.json`` (its result
    carries the record; other ranks get an empty one).
    """
    from avgkit import __version__
    from avgkit.runtime.device import autocast_dtype, check_precision

    check_precision(request.precision)
    env = env or DistEnv(device=gen.device)
    out = Path(out_dir)
    labels = np.asarray(request.labels, dtype=np.int64)
    n = len(labels)
    if n == 0:
        raise AvgkitError("nothing to sample: the label list is empty")
    prompts = request.prompts
    if prompts is not None and not (len(prompts) and 0 <= labels.min() and labels.max() < len(prompts)):
        raise AvgkitError(f"prompt jobs label images by prompt index, 0..{len(prompts) - 1}")
    # a prompt job's labels are prompt indices: the sampler gets the prompts' condition rows
    table = gen.prompt_conditions(prompts) if prompts is not None else None

    def conditions(lo: int, hi: int) -> Any:
        part = labels[lo:hi]
        return part if table is None else table.index_select(0, torch.as_tensor(part))
    old, problem = broadcast_json(_read_job(out) if env.is_main else None, env)
    if problem:
        raise AvgkitError(problem)
    # a resume keeps the job's shard size unless one is given (then it must match)
    shard_size = request.shard_size or (old or {}).get("shard_size") or request.batch_size
    if not isinstance(shard_size, int) or shard_size < 1 or request.batch_size < 1:
        raise AvgkitError("batch size and shard size must be at least 1")
    options, inherited_width = _job_sampler_options(gen, request, old)
    sampler_cfg = gen.sampler_config(**options)
    sampler = gen.make_sampler(**options)
    _, height, width = gen.image_shape
    image_hw = (height, width)

    hashes = broadcast_json(_weights_hashes(gen) if env.is_main else None, env)
    sampler_record = {"name": gen.sampler_name, **sampler_cfg.model_dump(mode="json")}
    identity = {
        "format": JOB_FORMAT,
        **hashes,
        "labels_sha256": _labels_sha256(labels),
        "num_images": n,
        "seed": request.seed,
        "sampler": {k: v for k, v in sampler_record.items() if k != DECODE_WIDTH},
        "precision": request.precision,
        "shard_size": shard_size,
        "image_shape": [height, width, 3],
        # only prompt jobs carry the key, so class jobs recorded before it still match
        **({"prompts_sha256": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()} if prompts is not None else {}),
        # what the backbone decodes with beyond the weights (e.g. its state's dtype); only backbones with such
        # settings carry the key
        **({DECODING: decoding} if (decoding := gen.backbone.decode_settings(
            autocast_dtype(request.precision, gen.device))) else {}),
    }
    decode_width = sampler_record.get(DECODE_WIDTH)

    def decode(codes: torch.Tensor) -> torch.Tensor:  # pixels in the same fixed groups as the tokens
        return in_fixed_groups(lambda c: gen.decode(c, request.precision), decode_width, codes)

    started_with = {"batch_size": request.batch_size, "device_type": gen.device.type, DECODE_WIDTH: decode_width}
    problem, note = broadcast_json(_identity_problem(out, old, identity, started_with) if env.is_main else None, env)
    if problem:
        raise AvgkitError(problem)
    barrier(env)
    num_shards = math.ceil(n / shard_size)
    todo = [s for s in range(num_shards) if not shard_path(out, s).is_file()]
    barrier(env)  # every rank has listed the shards before any is written
    mine = todo[env.rank :: env.world_size]
    my_total = sum(min(n, (s + 1) * shard_size) - s * shard_size for s in mine)
    todo_total = sum(min(n, (s + 1) * shard_size) - s * shard_size for s in todo)
    is_tty = sys.stderr.isatty()
    report = SampleProgress(my_total, label="sampling" if env.world_size == 1 else f"rank {env.rank}",
                            enabled=progress and (env.is_main or not is_tty))
    if note:
        report.say(note)
    if inherited_width is not None and inherited_width != request.batch_size:
        report.say(f"decoding in groups of {inherited_width} images, the width this job started with, so its images do not "
                   f"change (pass --decode-width to choose another)")
    if num_shards > len(todo):
        report.say(f"{out}: {num_shards - len(todo)} of {num_shards} shards already done, {len(todo)} to sample")

    warmup_s = 0.0
    if mine:
        # one batch before timing: kernel compilation, autotuning and (on CUDA) the sampler's
        # per-batch-size graph capture happen here; a small batch suffices on the CPU
        t = time.perf_counter()
        lo = mine[0] * shard_size
        k = min(request.batch_size if gen.device.type == "cuda" else 2, request.batch_size, n - lo)
        for _, codes in gen.iter_codes(conditions(lo, lo + k), np.arange(lo, lo + k), sampler=sampler,
                                       seed=request.seed, batch_size=k, precision=request.precision):
            decode(codes)
        _sync(gen.device)
        warmup_s = time.perf_counter() - t
        report.say(f"warm-up: {k} image(s) in {warmup_s:.1f} s (not timed)")
    barrier(env)
    report.start = t0 = time.perf_counter()

    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="avgkit-shard-writer")
    pending: deque[Future] = deque()
    # every rank takes part in the same number of stop checks (one per round of shards)
    rounds = -(-len(todo) // env.world_size)
    group = _stop_group(env)
    stop = StopSignals("finishing the shard being sampled, then stopping")
    try:
        with stop:
            for i in range(rounds):
                if i < len(mine):
                    s = mine[i]
                    lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
                    parts = []
                    for part, codes in gen.iter_codes(conditions(lo, hi), np.arange(lo, hi), sampler=sampler,
                                                      seed=request.seed, batch_size=request.batch_size,
                                                      precision=request.precision):
                        parts.append(to_uint8_hwc(decode(codes)))
                        report.advance(part.stop - part.start, note=f" [shard {s + 1}/{num_shards}]")
                    pending.append(writer.submit(_write_shard, out, s, np.concatenate(parts), labels[lo:hi],
                                                 np.arange(lo, hi, dtype=np.int64), request.write_png,
                                                 "class" if prompts is None else "prompt"))
                    while len(pending) > MAX_PENDING_WRITES:
                        pending.popleft().result()
                stopping = stop.agreed(env, group)
                if stopping is not None and i + 1 < rounds:
                    while pending:  # the shards sampled so far are kept
                        pending.popleft().result()
                    raise Interrupted(f"stopped by {signal_name(stopping)} after {(i + 1) * env.world_size} of "
                                      f"{len(todo)} shards to sample; run the same command again to continue",
                                      stopping)
        while pending:
            pending.popleft().result()
    finally:
        writer.shutdown(wait=True)
        report.close()
    _sync(gen.device)
    barrier(env)
    wall = time.perf_counter() - t0
    rate = todo_total / wall if todo_total and wall > 0 else None
    if not env.is_main:
        return JobResult(out, n, todo_total, rate, {})

    merge_shards(out, labels, shard_size, image_hw)
    cfg_scale = getattr(sampler_cfg, "cfg_scale", None)
    title = f"{gen.recipe.name} seed {request.seed}" + (f" cfg {cfg_scale:g}" if cfg_scale is not None else "")
    grid = write_grid(out, labels, shard_size, image_hw, request.grid_classes, request.grid_per_class, title, prompts)
    classes = list(dict.fromkeys(labels.tolist()))
    record = {
        "avgkit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(command) if command is not None else None,
        "checkpoint": {**gen.describe(), **hashes},
        "recipe": gen.recipe.to_dict(),
        "sampler": sampler_record,
        **({DECODING: identity[DECODING]} if DECODING in identity else {}),
        "seed": request.seed,
        "classes": request.classes_spec,
        "class_ids": classes,
        "per_class": request.per_class,
        **(_prompt_record(prompts, getattr(gen, "captions", None)) if prompts is not None else {}),
        "num_images": n,
        "image_shape": [height, width, 3],
        "precision": request.precision,
        "batch_size": request.batch_size,
        "shard_size": shard_size,
        "world_size": env.world_size,
        "device": str(gen.device),
        "device_name": torch.cuda.get_device_name(gen.device) if gen.device.type == "cuda" else "cpu",
        "timing": _timing(out, warmup_s, todo_total, wall, rate),
        "files": {"samples": SAMPLES_FILE, "grid": GRID_FILE if grid else None,
                  "images": IMAGES_DIR if request.write_png else None,
                  "shards": None if request.clean_shards else SHARD_DIR},
        "plugins": _plugin_versions(),
    }
    atomic_write_json(out / RECORD_FILE, record, indent=1)
    if request.clean_shards:
        shutil.rmtree(out / SHARD_DIR, ignore_errors=True)
    if rate:
        report.say(f"sampled {todo_total} images in {wall:.1f} s: {rate:.2f} images/s ({env.world_size} process(es))")
    report.say(f"wrote {out / SAMPLES_FILE} ({n} images), {out / RECORD_FILE}")
    return JobResult(out, n, todo_total, rate, record)
