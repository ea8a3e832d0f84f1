"""Launching Triton kernels: autotuning on a GPU, one pinned config under the interpreter.

Autotuning benchmarks each valid config on the first call for a given key (problem
dims, dtypes, flags) and keeps the winner for the process. Where Triton supports it
(``cache_results``), the winner is also written to Triton's on-disk cache
(``$TRITON_CACHE_DIR``, default ``~/.triton/cache``), so later processes skip the
benchmark. Under ``TRITON_INTERPRET=1`` (CPU), there is no GPU to benchmark on, so each
kernel runs with a single config pinned by its ``interp`` function; so do problems of a
few tokens on a GPU (``PIN_BELOW_TOKENS``), where autotuning only costs start-up time.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import triton

#: True when Triton runs kernels on the CPU interpreter (decided at import, like Triton).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

try:  # grid dependency control (Hopper and later; Triton 3.3+)
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: F401
    HAS_PDL = True
except ImportError:  # pragma: no cover - older Triton: the kernels never call them (``use_pdl`` is False)
    gdc_launch_dependents = gdc_wait = None
    HAS_PDL = False

#: Programmatic dependent launch of the decode step's Triton kernels (``AVGKIT_TRITON_PDL=1``, or within
#: :func:`programmatic_launch`): each may start while the kernel before it finishes, loads what that kernel does
#: not write (its state tile), then waits for it (``gdc_wait``). Off by default until measured.
_PDL = os.environ.get("AVGKIT_TRITON_PDL", "0") == "1"


def use_pdl() -> bool:
    """Whether the decode kernels launch with programmatic dependent launch now (never under the interpreter)."""
    return _PDL and HAS_PDL and not INTERPRET


def pdl_options() -> dict[str, Any]:
    """The launch options of a decode kernel: ``launch_pdl`` where :func:`use_pdl`, else none."""
    return {"launch_pdl": True} if use_pdl() else {}


@contextlib.contextmanager
def programmatic_launch(enabled: bool) -> Iterator[None]:
    """Within the block the decode kernels launch with (or without) programmatic dependent launch; a CUDA graph
    captured inside keeps it."""
    global _PDL
    saved, _PDL = _PDL, enabled
    try:
        yield
    finally:
        _PDL = saved


def last_dim_contiguous(t: Any) -> Any:
    """``t`` with unit stride in its last dim (the kernels index rows by one stride), or ``None``."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def row_align(*strides: int) -> int:
    """The largest power of two up to 8 dividing every stride (elements). Kernels take such strides divided by it
    and multiply back by a compile-time constant: a column slice of ``in_proj``'s output has a row stride Triton
    sees as unaligned (AiM-B's is 3352, not a multiple of 16), and without the factor its rows load and store
    element by element instead of 16 bytes at a time."""
    align = 8
    while align > 1 and any(s % align for s in strides):
        align //= 2
    return align


#: Problems of fewer tokens than this (a sampler's prefill of its conditioning prefix) run the
#: pinned config instead of autotuning: on a cold start, compiling every candidate of the scan's
#: kernels cost seconds for a call that takes microseconds either way.
PIN_BELOW_TOKENS = 64

Meta = dict[str, Any]
ConfigSpec = tuple[Meta, int, int]  # (constexpr meta, num_warps, num_stages)


class Launcher:
    """A Triton kernel plus its autotune configs, validity rule and interpreter config.

    ``valid(args, meta)`` says whether a config fits the problem in ``args`` (the
    kernel's keyword arguments); ``interp(args)`` returns the meta used under the
    interpreter; ``grid(meta)`` receives the kernel arguments merged with the config.
    Autotuning runs every config on the real output buffers, so what a kernel writes
    must not depend on its config (no per-tile partial slots) and must not be in place.
    """

    def __init__(
        self,
        fn: Any,
        configs: Sequence[ConfigSpec],
        key: Sequence[str],
        valid: Callable[[Meta, Meta], bool],
        interp: Callable[[Meta], Meta],
        autotune: bool = True,
    ) -> None:
        self.fn = fn
        self.configs = list(configs)
        self.key = list(key)
        self.valid = valid
        self.interp = interp
        self.autotune = autotune
        self._tuned: Any = None

    def _autotuned(self) -> Any:
        if self._tuned is None:
            cfgs = [triton.Config(dict(m), num_warps=w, num_stages=s) for m, w, s in self.configs]

            def prune(configs: list, named_args: Meta, **kwargs: Any) -> list:
                args = {**named_args, **kwargs}
                kept = [c for c in configs if self.valid(args, c.kwargs)]
                return kept or [self._fallback(args)]

            extra: Meta = {}
            if "cache_results" in inspect.signature(triton.autotune).parameters:
                extra["cache_results"] = True
            self._tuned = triton.autotune(
                cfgs, key=self.key, prune_configs_by={"early_config_prune": prune}, **extra
            )(self.fn)
        return self._tuned

    def _fallback(self, args: Meta) -> Any:
        meta = self.interp(args)
        warps = meta.pop("num_warps", 4)
        return triton.Config(meta, num_warps=warps, num_stages=1)

    def pinned(self, kwargs: Meta) -> bool:
        """Whether this call runs the ``interp`` config: under the interpreter, without autotuning, or a
        problem shorter than ``PIN_BELOW_TOKENS`` tokens."""
        return INTERPRET or not self.autotune or kwargs.get("seqlen", PIN_BELOW_TOKENS) < PIN_BELOW_TOKENS

    def __call__(self, grid: Callable[[Meta], tuple[int, ...]], **kwargs: Any) -> None:
        if self.pinned(kwargs):
            meta = self.interp(kwargs)
            self.fn[grid({**kwargs, **meta})](**kwargs, **meta)
        else:
            self._autotuned()[grid](**kwargs)
