"""The training step replayed from one CUDA graph (``train.cuda_graph``).

With its blocks compiled, the host takes almost as long to queue a step's hundreds of
launches (inductor's kernels, the Triton scan's launchers, the loss, the optimizer) as
the GPU takes to run them, so any slow launch leaves the GPU waiting. Captured once, the
forwards, backwards, gradient clipping and the optimizer update are launched as one
graph: 1.03-1.04x AiM-B's and AiM-L's tokens/s on an H100 (docs/benchmarks.md, training).

What capture needs, and how it is met:

* fixed shapes: the loader drops the last partial batch, so every step's micro-batches
  have the same shapes; they are copied into the same input buffers before each replay;
* no host read of a tensor inside the step (tests walk the trainer's step for them with
  :func:`avgkit.testing.host_reads.host_reads`);
* the optimizer's step counter and learning rate on the GPU: the groups are made
  ``capturable`` with a tensor ``lr`` that :func:`avgkit.train.optim.set_lr` fills;
* autocast's cast cache off: the casts are recorded into the graph instead;
* warm-up steps on a side stream first, so that compilation, autotuning and the caching
  allocator have settled before anything is recorded.

The graph's memory pool keeps the step's activations allocated between steps, so
validation and sample grids add their memory to the step's instead of reusing it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from avgkit.errors import AvgkitError

#: eager steps before capture: the first compiles and autotunes, the next ones settle the allocator
WARMUP_STEPS = 3


def resolve_cuda_graph(choice: str, device: torch.device, *, distributed: bool, class_labels: bool) -> bool:
    """Whether ``train.cuda_graph`` replays the step from a graph on this run.

    ``auto`` does on a single CUDA process training on class labels; ``on`` insists, with
    a one-line error where it cannot (CPU, several processes, caption conditions).
    """
    usable = device.type == "cuda" and not distributed and class_labels
    if choice == "auto":
        return usable
    if choice == "on" and not usable:
        why = ("needs a CUDA device" if device.type != "cuda" else
               "runs in a single process (DDP and FSDP reduce gradients through hooks outside the graph)"
               if distributed else "needs class labels (caption conditions are looked up on the host)")
        raise AvgkitError(f"train.cuda_graph=on {why}; use train.cuda_graph=auto or off")
    return choice == "on"


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Each group's step counter and learning rate on its parameters' device, so that ``step()`` can be captured."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        if not isinstance(group["lr"], Tensor):
            device = group["params"][0].device
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


class StepGraph:
    """``step(*inputs)`` run eagerly for ``warmup`` calls, then captured once and replayed.

    ``step`` takes the input buffers (filled from the call's tensors), computes
    gradients, clips them and updates through ``optimizer``, and returns tensors; the
    call returns copies of them (the next replay overwrites the originals). Gradients
    are set to None before each eager call and before capture, so that the recorded
    backward writes them afresh rather than adding to the last step's.
    """

    def __init__(self, step: Callable[..., Sequence[Tensor]], optimizer: torch.optim.Optimizer, *,
                 device: torch.device, warmup: int = WARMUP_STEPS) -> None:
        self.step, self.optimizer, self.warmup = step, optimizer, warmup
        #: off a GPU every call runs eagerly through the same buffers (the benchmarks' CPU smoke runs)
        self.device, self.capture = device, device.type == "cuda"
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[Tensor] = []
        self.outputs: Sequence[Tensor] = ()

    def _fill(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        if not self.inputs:
            self.inputs = [torch.empty_like(x, device=self.device) for x in inputs]
        for buf, x in zip(self.inputs, inputs, strict=True):
            if buf.shape != x.shape or buf.dtype != x.dtype:
                raise AvgkitError(f"train.cuda_graph: a step's input changed from {tuple(buf.shape)} {buf.dtype} to "
                                  f"{tuple(x.shape)} {x.dtype}; the loader must give fixed-size batches, or set "
                                  f"train.cuda_graph=off")
            buf.copy_(x, non_blocking=True)
        return self.inputs

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        if self.calls == 0 and self.capture:  # after any resume: load_state_dict brings back float learning rates
            make_capturable(self.optimizer)
        self.calls += 1
        static = self._fill(inputs)
        if self.graph is None:  # an eager call or the capture: the backward writes fresh gradients
            self.optimizer.zero_grad(set_to_none=True)
            if not self.capture:
                return tuple(t.clone() for t in self.step(*static))
            if self.calls <= self.warmup:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    out = tuple(t.clone() for t in self.step(*static))
                torch.cuda.current_stream().wait_stream(side)
                return out
            torch.cuda.empty_cache()  # the warm-up's cached blocks back, before the graph's own pool takes its memory
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = tuple(self.step(*static))
        self.graph.replay()
        return tuple(t.clone() for t in self.outputs)
