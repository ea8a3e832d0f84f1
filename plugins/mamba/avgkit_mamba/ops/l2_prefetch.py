"""The next layer's weights read into L2 while this layer decodes.

At a few rows a decoding step's projections wait on their weights: each reads its whole
weight from DRAM for 32-128 rows (AiM-B: 7.5 MB a layer), at about a third of the copy
bandwidth, so most of its 5 us is the latency of those reads. A side stream can read the
next layer's weights into L2 (marked to stay there) while this layer's kernels run, so that
its projections find them there. The values read are not used, so nothing a step computes
changes. Whether a step does it is the dispatcher's choice (``dispatch.weight_prefetcher``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import triton
import triton.language as tl
from torch import Tensor

#: weights one program reads
BLOCK = 8192


@triton.jit
def _prefetch_kernel(w_ptr, n, sink_ptr, BLOCK: tl.constexpr):
    """Reads a block of ``w`` into L2 marked ``evict_last``; the store that never happens keeps the loads."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    total = tl.sum(tl.load(w_ptr + offs, mask=offs < n, other=0.0, eviction_policy="evict_last").to(tl.float32),
                   axis=0)
    tl.store(sink_ptr + tl.program_id(0), total, mask=total == 1.2345e38)


def read_into_l2(tensors: Iterable[Tensor], sink: Tensor) -> None:
    """Launches that read ``tensors`` (contiguous) into L2 on the current stream; ``sink`` (fp32) holds at least
    one value for each of their programs and is never written in practice."""
    for t in tensors:
        programs = triton.cdiv(t.numel(), BLOCK)
        if sink.numel() < programs:
            raise ValueError(f"sink of {sink.numel()} values for {programs} programs")
        _prefetch_kernel[(programs,)](t, t.numel(), sink, BLOCK=BLOCK)


class WeightPrefetcher:
    """Reads weights into L2 on a side stream that forks from the current stream at each :meth:`prefetch` (so it
    never reads ahead of what the main stream has done) and joins at :meth:`join`; captured into a CUDA graph the
    fork and join become the graph's edges."""

    def __init__(self) -> None:
        self._stream: torch.cuda.Stream | None = None
        self._sink: Tensor | None = None

    def prefetch(self, tensors: list[Tensor]) -> None:
        device = tensors[0].device
        main = torch.cuda.current_stream(device)
        if self._stream is None or self._stream.device != device:
            self._stream = torch.cuda.Stream(device)
        programs = max(triton.cdiv(t.numel(), BLOCK) for t in tensors)
        if self._sink is None or self._sink.device != device or self._sink.numel() < programs:
            self._sink = torch.zeros(programs, device=device)
        self._stream.wait_stream(main)
        with torch.cuda.stream(self._stream):
            read_into_l2(tensors, self._sink)

    def join(self) -> None:
        if self._stream is not None:
            torch.cuda.current_stream(self._stream.device).wait_stream(self._stream)


_PREFETCHERS: dict[torch.device, WeightPrefetcher] = {}


def prefetcher_for(device: torch.device) -> WeightPrefetcher:
    """The one prefetcher (side stream, sink) of ``device``."""
    return _PREFETCHERS.setdefault(torch.device(device), WeightPrefetcher())
