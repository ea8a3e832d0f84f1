"""``train.parallel: fsdp``: the model sharded with FSDP2, its EMA, gathering and checkpoints.

``fully_shard`` is applied to every backbone block, then to the whole ``ARModel`` (the
root holds the embeddings, head, final norm and the conditioner). Each block's
parameters are gathered for its forward and backward only, and every rank keeps
``1 / world`` of the parameters, gradients and AdamW state. Under bf16 precision the
blocks compute with bf16 copies of the parameters while the sharded parameters, the
optimizer and the gradient reduction stay fp32.

The blocks are those :func:`avgkit.train.regions.find_blocks` names. The EMA of a sharded
model is sharded the same way (:class:`ShardedEMA`); sampling gathers full copies
(:func:`gather_state`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from avgkit.errors import AvgkitError
from avgkit.runtime.distributed import DistEnv
from avgkit.train.regions import backbone_blocks


def fsdp_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one by one (:func:`avgkit.train.regions.find_blocks`)."""
    return backbone_blocks(backbone, "train.parallel=fsdp", "shard", "train.parallel=ddp")


def require_process_group() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise AvgkitError(
            "train.parallel=fsdp needs a process group: launch with torchrun (`torchrun --nproc-per-node N -m avgkit "
            "train ...`, N may be 1), or use train.parallel=ddp"
        )


def plain_template(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with parameters on the meta device (ties kept) and real buffers.

    Taken before sharding; :func:`plain_copy` fills it with gathered weights for sampling.
    """
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    return copy.deepcopy(model, memo)


def shard_model(model: nn.Module, blocks: list[nn.Module], env: DistEnv, compute_dtype: torch.dtype | None) -> None:
    """FSDP2 over ``blocks`` then ``model`` (in place), on one mesh of all ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    require_process_group()
    mesh = init_device_mesh(env.device.type, (dist.get_world_size(),))
    # fp32 reduction: the gradient sum over ranks keeps full precision whatever the compute dtype
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def full_value(t: Tensor) -> Tensor:
    """A DTensor's full value (a collective), a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def gather_state(state: Mapping[str, Tensor], env: DistEnv) -> dict[str, Tensor] | None:
    """Full tensors of a (partly) sharded state dict on rank 0, ``None`` elsewhere.

    A collective: every rank calls it with the same keys. Tied keys (the same tensor
    object) are gathered once and stay one tensor.
    """
    out: dict[str, Tensor] = {}
    done: dict[int, Tensor] = {}
    for key, t in state.items():
        if id(t) not in done:
            done[id(t)] = full_value(t.detach())
        if env.is_main:
            out[key] = done[id(t)]
        else:
            done[id(t)] = torch.empty(0)  # keep the id taken, drop the memory
    return out if env.is_main else None


def plain_copy(template: nn.Module, state: Mapping[str, Tensor], device: torch.device) -> nn.Module:
    """``template`` (see :func:`plain_template`) holding ``state``: an ordinary module for sampling."""
    module = copy.deepcopy(template)
    module.load_state_dict(dict(state), strict=True, assign=True)
    return module.to(device).eval()


class ShardedEMA:
    """The EMA of a sharded model: fp32 shards laid out like the parameters, updated locally.

    Same rule as :class:`avgkit.train.optim.EMA` (warm-up, buffers copied, not averaged);
    no communication per step. ``state_dict()`` has the model's keys (DTensors over the
    shards, tied keys sharing one), for checkpoints and for :func:`gather_state`.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        from torch.distributed.tensor import DTensor

        self.decay = decay
        self._live: list[Tensor] = []
        self._shadow: list[Tensor] = []
        self._state: dict[str, Tensor] = {}
        made: dict[int, Tensor] = {}
        live_state = model.state_dict(keep_vars=True)
        params = {id(p) for p in model.parameters()}
        for key, t in live_state.items():
            if id(t) not in params:
                self._state[key] = t  # a buffer: the live one is what the EMA module would hold
                continue
            if id(t) not in made:
                local = (t.to_local() if isinstance(t, DTensor) else t).detach().float().clone()
                self._live.append(t)
                self._shadow.append(local)
                made[id(t)] = (DTensor.from_local(local, t.device_mesh, t.placements, run_check=False, shape=t.shape,
                                                  stride=t.stride()) if isinstance(t, DTensor) else local)
            self._state[key] = made[id(t)]

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int | None = None) -> None:
        from torch.distributed.tensor import DTensor

        from avgkit.train.optim import ema_decay_at

        decay = self.decay if updates is None else ema_decay_at(self.decay, updates)
        live = [(p.to_local() if isinstance(p, DTensor) else p).detach().float() for p in self._live]
        torch._foreach_lerp_(self._shadow, live, 1.0 - decay)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self._state)
