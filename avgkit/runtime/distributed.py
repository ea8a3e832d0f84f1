"""Process-group setup for ``torchrun`` launches (DDP, FSDP), and helpers that also work alone.

A launch is distributed when ``WORLD_SIZE`` > 1 is set in the environment (``torchrun``
sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``).
NCCL is used on CUDA, gloo on CPU. Only rank 0 writes files.
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from avgkit.errors import AvgkitError
from avgkit.runtime.device import resolve_device

#: How long ranks wait for each other at a barrier (tokenizer training and code
#: extraction run on rank 0 while the others wait).
DEFAULT_TIMEOUT = timedelta(hours=3)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise AvgkitError(f"environment variable {name}={value!r} is not an integer; unset it or fix it") from None


def setup(device_preference: str = "auto", *, parallel: str = "ddp") -> DistEnv:
    """Join the process group when launched by ``torchrun``; otherwise a single process.

    ``parallel="fsdp"`` needs a process group even on one process (FSDP shards over
    it), so it must be launched by ``torchrun``.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    device = resolve_device(device_preference, local_rank=local_rank, option="train.device")
    if parallel == "fsdp" and "WORLD_SIZE" not in os.environ and not dist.is_initialized():
        raise AvgkitError(
            "train.parallel=fsdp needs a process group: launch with torchrun (`torchrun --nproc-per-node N -m avgkit "
            "train ...`, N may be 1), or use train.parallel=ddp"
        )
    if world <= 1 and parallel != "fsdp":
        return DistEnv(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            timeout=DEFAULT_TIMEOUT,
            device_id=device if device.type == "cuda" else None,
        )
        initialized_here = True
    return DistEnv(rank, world, local_rank, device, initialized_here)


def teardown(env: DistEnv) -> None:
    if env.initialized_here and dist.is_initialized():
        # FSDP's module states are reference cycles that keep the group's last gloo work (and its
        # tensors) alive; freed during interpreter shutdown instead, that work can abort the process
        gc.collect()
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        if env.device.type == "cuda":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def all_reduce_mean(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (in place when distributed)."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= env.world_size
    return tensor


def all_gather_cat(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Concatenate equally shaped tensors from every rank along dim 0, in rank order."""
    if not env.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(env.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, 0)


def broadcast_json(value: Any, env: DistEnv) -> Any:
    """Rank 0's JSON-able ``value`` on every rank (sent as bytes; nothing is pickled)."""
    if not env.distributed:
        return value
    data = json.dumps(value).encode() if env.is_main else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=env.device)
    dist.broadcast(size, src=0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=env.device)
    if env.is_main:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src=0)
    return json.loads(bytes(buf.cpu().tolist()).decode())
