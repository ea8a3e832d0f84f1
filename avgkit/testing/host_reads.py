"""Where code reads tensor values on the host: what would stop a CUDA graph's capture, found on the CPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

#: ATen ops that hand a tensor's value to the host (or size their output by it)
READING = frozenset({"_local_scalar_dense", "nonzero", "is_nonzero", "equal", "allclose", "unique", "_unique2",
                     "masked_select", "repeat_interleave"})


def host_reads(fn: Callable[[], Any]) -> list[str]:
    """The ATen ops through which ``fn`` reads tensor values on the host (``.item()``, ``nonzero``, ...).

    Such a read would stop a CUDA graph's capture; on the CPU it is merely a value, so
    this lists them where no GPU is at hand.
    """
    found: list[str] = []

    class _Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            name = func.overloadpacket.__name__
            if name in READING:
                found.append(name)
            return func(*args, **(kwargs or {}))

    with _Watch():
        fn()
    return found
