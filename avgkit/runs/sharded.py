"""Sharded checkpoints (``train.parallel: fsdp``): one safetensors file per rank and an index.

A sharded checkpoint is a ``checkpoints/step-XXXXXX/`` folder like any other, written
with the same protocol (a ``.tmp`` folder, every file fsynced, renamed, ``COMPLETE``
last)::

    shard-00000-of-00002.safetensors   rank 0's rows of every sharded tensor, and the replicated ones
    shard-00001-of-00002.safetensors   rank 1's rows
    shards.json                        world size, files, every tensor's shape, dtype and rows per rank,
                                       tied names, the optimizer's parameter groups
    model.safetensors, ema.safetensors the full weights, consolidated from the shards (what
                                       ``avgkit sample`` and the resume check read)
    trainer.json, COMPLETE

Tensors are named ``<part>.<key>``: ``model.<state-dict key>``, ``ema.<state-dict key>``,
``optimizer.<parameter name>.<state>``. A sharded tensor is a DTensor split by rows
(``Shard(0)`` on a one-dimensional mesh, what FSDP2 makes): rank r's file holds its rows,
and the index says how many each rank has. A replicated tensor (a buffer, Adam's step
count) is stored once, in rank 0's file.

Loading reads, for every target tensor, the rows this rank owns now from whichever files
hold them (``safe_open`` slices, so a rank reads its share, not the whole model): on the
same number of ranks each rank reads exactly its own file back, bit for bit; on another
number the rows are regrouped; a plain (unsharded) target reads the full tensor.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from avgkit.io import atomic_write_json
from avgkit.runs.checkpoint import CheckpointError, publish, save_tensors
from avgkit.runs.layout import SHARD_INDEX_FILE, TRAINER_FILE, shard_file, step_dir_name
from avgkit.runtime.distributed import DistEnv, all_gather_cat, barrier

FORMAT = "avgkit-sharded-checkpoint"
VERSION = 1
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                       torch.int64, torch.int32, torch.uint8, torch.int8, torch.bool)}


def is_sharded(ckpt: Path) -> bool:
    return (Path(ckpt) / SHARD_INDEX_FILE).is_file()


def _dtensor_local(t: Tensor) -> Tensor | None:
    """The local rows of a DTensor sharded on dim 0 of a 1-D mesh; ``None`` for a plain tensor."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(t, DTensor):
        return None
    if t.device_mesh.ndim != 1 or tuple(t.placements) != (Shard(0),):
        raise CheckpointError(f"cannot store a DTensor placed as {t.placements} on a {t.device_mesh.ndim}-D mesh; "
                              f"sharded checkpoints hold row-sharded (Shard(0)) tensors of one mesh dimension")
    return t.to_local()


def _local_rows(tensors: Sequence[Tensor], env: DistEnv) -> Tensor:
    """``(world, n)`` rows of each tensor on each rank (one all-gather; plain tensors count fully)."""
    counts = torch.tensor([[t.shape[0] if t.ndim else 1 for t in tensors]], dtype=torch.int64, device=env.device)
    return all_gather_cat(counts, env).cpu() if env.distributed else counts.cpu()


def _aliases(tensors: Mapping[str, Tensor]) -> dict[str, str]:
    """Tied entries (the very same tensor object under two keys): ``alias -> first key``."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for k, t in tensors.items():
        owner = first.setdefault(id(t), k)
        if owner != k:
            aliases[k] = owner
    return aliases


# ----------------------------------------------------------------------------- writing
def save_sharded(
    ckpt_root: Path,
    step: int,
    *,
    env: DistEnv,
    parts: Mapping[str, Mapping[str, Tensor]],
    state: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    consolidate: Mapping[str, str] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write ``ckpt_root/step-XXXXXX`` from every rank (a collective: all ranks call it alike).

    ``parts`` maps a part name (model, ema, optimizer) to its tensors (DTensors sharded
    on dim 0, or plain tensors, identical on every rank); ``extra`` goes into the index
    (the optimizer's groups); ``consolidate`` maps a part to a file name that rank 0
    fills with that part's full tensors (tied entries stored once, as
    :func:`avgkit.runs.checkpoint.save_tensors` does). Rank 0 writes the index,
    ``trainer.json`` holding ``state``, and ``COMPLETE`` last, after every shard is on disk.
    """
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / (final.name + ".tmp")
    if env.is_main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier(env)

    flat = {f"{part}.{key}": t for part, tensors in parts.items() for key, t in tensors.items()}
    aliases = _aliases(flat)
    names = [k for k in flat if k not in aliases]
    locals_ = {k: _dtensor_local(flat[k]) for k in names}
    sharded = [k for k in names if locals_[k] is not None]
    rows = _local_rows([locals_[k] for k in sharded], env) if sharded else torch.zeros(env.world_size, 0)  # type: ignore[misc]
    mine: dict[str, Tensor] = {k: locals_[k] for k in sharded}  # type: ignore[misc]
    if env.is_main:
        mine.update({k: flat[k] for k in names if locals_[k] is None})
    meta = {"format": FORMAT, "step": str(step), "rank": str(env.rank), "world_size": str(env.world_size)}
    save_tensors(tmp / shard_file(env.rank, env.world_size), {k: v.detach() for k, v in mine.items()}, meta)
    barrier(env)  # every shard is durable before the index names it

    if env.is_main:
        entries: dict[str, Any] = {}
        for k in names:
            t = flat[k]
            entry: dict[str, Any] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            if k in sharded:
                entry["rows"] = rows[:, sharded.index(k)].tolist()
            entries[k] = entry
        index = {
            "format": FORMAT,
            "version": VERSION,
            "step": step,
            "world_size": env.world_size,
            "files": [shard_file(r, env.world_size) for r in range(env.world_size)],
            "tensors": entries,
            "aliases": aliases,
            **dict(extra or {}),
        }
        atomic_write_json(tmp / SHARD_INDEX_FILE, index, indent=1)
        for part, filename in (consolidate or {}).items():
            if part in parts:
                with ShardReader(tmp) as reader:
                    save_tensors(tmp / filename, reader.full_part(part),
                                 {"format": "avgkit-checkpoint", "step": str(step)})
        atomic_write_json(tmp / TRAINER_FILE, dict(state), indent=1)
        publish(tmp, final, step, keep_last)
    barrier(env)  # no rank goes on before the checkpoint is complete
    return final


# ----------------------------------------------------------------------------- reading
class ShardReader:
    """The tensors of a sharded checkpoint folder, read by rows (use as a context manager)."""

    def __init__(self, ckpt: Path) -> None:
        self.path = Path(ckpt)
        self.fix = f"delete {self.path} to resume from the previous checkpoint, or start afresh without --resume"
        index_path = self.path / SHARD_INDEX_FILE
        try:
            self.index = json.loads(index_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"checkpoint file {index_path} is unreadable ({err}); {self.fix}") from None
        if self.index.get("format") != FORMAT:
            raise CheckpointError(f"{index_path} is not an avgkit sharded checkpoint index; {self.fix}")
        self.world_size = int(self.index["world_size"])
        self.tensors: dict[str, dict[str, Any]] = self.index["tensors"]
        self.aliases: dict[str, str] = self.index.get("aliases", {})
        self._stack = ExitStack()
        self._files: dict[int, Any] = {}

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _file(self, rank: int) -> Any:
        if rank not in self._files:
            path = self.path / self.index["files"][rank]
            if not path.is_file():
                raise CheckpointError(f"checkpoint file {path} is missing; {self.fix}")
            try:
                self._files[rank] = self._stack.enter_context(safe_open(str(path), framework="pt"))
            except (SafetensorError, OSError) as err:
                raise CheckpointError(f"checkpoint file {path} is unreadable ({err}); {self.fix}") from None
        return self._files[rank]

    def entry(self, name: str) -> dict[str, Any]:
        key = self.aliases.get(name, name)
        if key not in self.tensors:
            raise CheckpointError(f"sharded checkpoint {self.path} has no tensor {name!r}; resume with the recipe "
                                  f"that wrote it")
        return self.tensors[key]

    def names(self, part: str) -> list[str]:
        """The keys of one part (tied ones included), without the part's prefix."""
        prefix = part + "."
        return [k[len(prefix):] for k in (*self.tensors, *self.aliases) if k.startswith(prefix)]

    def rows(self, name: str, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` of tensor ``name`` (all of a replicated tensor when it has no rows)."""
        key = self.aliases.get(name, name)
        entry = self.entry(name)
        shape = entry["shape"]
        if "rows" not in entry:
            full = self._file(0).get_tensor(key)
            return full if not shape else full[start:stop]
        pieces, offset = [], 0
        for rank, n in enumerate(entry["rows"]):
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                pieces.append(self._file(rank).get_slice(key)[lo - offset : hi - offset])
            offset += n
        if not pieces:
            return torch.empty((0, *shape[1:]), dtype=_DTYPES[entry["dtype"]])
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def full(self, name: str) -> Tensor:
        shape = self.entry(name)["shape"]
        return self.rows(name, 0, shape[0] if shape else 1)

    def full_part(self, part: str) -> dict[str, Tensor]:
        """One part's full tensors, keyed without the prefix; tied keys share one tensor."""
        out: dict[str, Tensor] = {}
        for key in self.names(part):
            name = f"{part}.{key}"
            if name not in self.aliases:
                out[key] = self.full(name)
        for alias, name in self.aliases.items():
            if alias.startswith(part + "."):
                out[alias[len(part) + 1:]] = out[name[len(part) + 1:]]
        return out

    # ------------------------------------------------------------------ into live tensors
    def load_into(self, targets: Mapping[str, Tensor], env: DistEnv, *, what: str) -> None:
        """Copy the checkpoint's ``targets`` keys (full names) into the tensors, each rank its rows.

        A collective when any target is a DTensor: every rank calls it with the same keys.
        """
        missing = [k for k in targets if self.aliases.get(k, k) not in self.tensors]
        if missing:
            raise CheckpointError(f"sharded checkpoint {self.path} lacks {what} tensors {missing[:3]}; resume with "
                                  f"the recipe that wrote it")
        locals_ = {k: _dtensor_local(t) for k, t in targets.items()}
        sharded = [k for k, v in locals_.items() if v is not None]
        rows = _local_rows([locals_[k] for k in sharded], env) if sharded else None  # type: ignore[misc]
        with torch.no_grad():
            for k, t in targets.items():
                entry = self.entry(k)
                if list(t.shape) != entry["shape"]:
                    raise CheckpointError(
                        f"sharded checkpoint {self.path}: {k} is {tuple(entry['shape'])} there but "
                        f"{tuple(t.shape)} in this model; resume with the recipe that wrote it")
                local = locals_[k]
                if local is None:
                    t.copy_(self.full(k).reshape(t.shape))
                else:
                    assert rows is not None
                    column = rows[:, sharded.index(k)]
                    start = int(column[: env.rank].sum())
                    local.copy_(self.rows(k, start, start + local.shape[0]))


# ----------------------------------------------------------------------------- optimizer
def optimizer_part(optimizer: torch.optim.Optimizer, names: Mapping[int, str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer's state by parameter name (``<name>.<state>``, resharded like its parameter),
    and its groups and non-tensor state for the index. ``names`` maps ``id(param)`` to its name."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    groups = []
    for group in optimizer.param_groups:
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "param_names": [names[id(p)] for p in group["params"]]})
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, Tensor):
                    tensors[f"{names[id(p)]}.{key}"] = value
                else:
                    scalars.setdefault(names[id(p)], {})[key] = value
    return tensors, {"optimizer": {"param_groups": groups, "scalars": scalars}}


def load_optimizer(reader: ShardReader, optimizer: torch.optim.Optimizer, names: Mapping[int, str],
                   env: DistEnv) -> None:
    """Restore :func:`optimizer_part`'s state into ``optimizer`` (a collective under FSDP)."""
    saved = reader.index.get("optimizer")
    if saved is None:
        raise CheckpointError(f"sharded checkpoint {reader.path} holds no optimizer state; {reader.fix}")
    ours = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    if [g["param_names"] for g in saved["param_groups"]] != ours:
        raise CheckpointError(f"sharded checkpoint {reader.path} holds the optimizer of other parameters; resume "
                              f"with the recipe that wrote it")
    state: dict[int, dict[str, Any]] = {}
    targets: dict[str, Tensor] = {}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for idx, p in enumerate(params):
        name = names[id(p)]
        entry: dict[str, Any] = dict(saved["scalars"].get(name, {}))
        for key in reader.names(f"optimizer.{name}"):
            full = f"optimizer.{name}.{key}"
            info = reader.entry(full)
            if "rows" in info:  # laid out like its parameter, on this rank's rows
                entry[key] = targets[full] = torch.zeros_like(p, dtype=_DTYPES[info["dtype"]])
            else:
                entry[key] = reader.full(full)
        if entry:
            state[idx] = entry
    reader.load_into(targets, env, what="optimizer")
    groups, start = [], 0
    for g in saved["param_groups"]:
        n = len(g["param_names"])
        group = {k: v for k, v in g.items() if k != "param_names"}
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append({**group, "params": list(range(start, start + n))})
        start += n
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"sharded checkpoint {reader.path} does not fit this model's optimizer ({err}); resume "
                              f"with the recipe that wrote it") from None

