"""Peak tensor memory of a piece of code on any device, the CPU included."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary


class PeakMemory(TorchDispatchMode):
    """Counts the bytes of the storages that operators create while it is active, until they are freed.

    ``peak`` is the largest sum of live storages (bytes) created inside the block, forward
    and backward alike; tensors that existed before it (parameters, inputs) are not
    counted. Works where ``torch.cuda.max_memory_allocated`` does not: on the CPU, and on
    the meta device, where it counts what the same code would allocate without running it::

        with PeakMemory() as mem:
            loss(model).backward()
        print(mem.peak / 2**20, "MiB")
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.current = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.current -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage not in self._live:
                    n = storage.nbytes()
                    self._live[storage] = n
                    self.current += n
                    weakref.finalize(storage, self._free, n)
                    self.peak = max(self.peak, self.current)
        return out
