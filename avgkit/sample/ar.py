"""The built-in autoregressive sampler: CFG, temperature, top-k, top-p, per-image seeds.

One decoding step (backbone step -> CFG combine -> filter -> draw -> feed) is written
once, on device tensors only (the step index included), so the same function runs
eagerly on the CPU and is captured into a CUDA graph on the GPU. Graphs are cached per
(backbone, batch, dtype, settings) and replayed across calls.

With ``compile`` the step goes through ``torch.compile`` first (inductor's fused
kernels), and that compiled step is what the CUDA graph captures: the graph is ours,
not inductor's cudagraph trees, so a backbone that updates its decoding state in place
(a KV cache, a position counter, a recurrent state) compiles and replays as it is.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from avgkit.interfaces import Backbone, Conditioner, Conditioning
from avgkit.registry import ComponentConfig
from avgkit.runtime.device import active_autocast_dtype
from avgkit.sample.filtering import draw_tokens, guidance_scale
from avgkit.sample.groups import in_fixed_groups
from avgkit.sample.rng import uniform


class ARSamplerConfig(ComponentConfig):
    cfg_scale: float = Field(1.0, ge=0.0, description="classifier-free guidance scale; 1 disables CFG")
    cfg_schedule: Literal["constant", "linear"] = Field(
        "constant", description="constant scale, or linear from 1 at the first token to cfg_scale at the last"
    )
    temperature: float = Field(1.0, ge=0.0, description="softmax temperature; 0 is greedy")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens; 0 keeps all")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus mass; 1 keeps all")
    cuda_graph: bool = Field(True, description="on CUDA, capture the decoding step once and replay it")
    compile: bool = Field(
        False, description="run the decoding step through torch.compile (fused kernels; the first call of each "
        "batch size compiles); on CUDA the compiled step is replayed from the step's CUDA graph"
    )
    draw_impl: Literal["auto", "torch", "triton"] = Field(
        "auto", description="the draw (CFG combine, temperature, softmax, float64 inverse CDF): auto, one Triton "
        "kernel on a GPU without top-k or top-p and PyTorch ops otherwise; torch, always the PyTorch ops (about "
        "eighteen launches a step); triton, the kernel or an error. The same tokens up to fp32 rounding "
        "(docs/sampling.md)"
    )
    decode_width: int | None = Field(
        None, ge=1, description="decode in groups of exactly this many images (the last one padded): every "
        "matrix kernel then sees one shape, so GPU images no longer depend on the batch size; None decodes "
        "each batch as given"
    )


@dataclass
class _Run:
    """Everything one decoding loop touches, as fixed device buffers."""

    backbone: Backbone
    state: Any
    cond: Conditioning
    codes: Tensor  # (B, N)
    u: Tensor  # (B, N) float64: the uniform each image draws each token with
    k: Tensor  # (1,) int64: index of the token being drawn
    graph: Any = None


def _uncached_autocast(kind: str) -> contextlib.AbstractContextManager:
    """The current autocast without its weight-cast cache, or nothing outside autocast.

    Autocast caches the low-precision copy of each weight until its outermost context
    exits; a graph captured while the cache is warm would read copies that are freed
    after this call, and replay whatever the memory then holds. Without the cache the
    casts are captured with the step, so a replay reads the weights themselves.
    """
    dtype = active_autocast_dtype(kind)
    return contextlib.nullcontext() if dtype is None else torch.autocast(kind, dtype=dtype, cache_enabled=False)


class ARSampler:
    """Raster-order sampling through a backbone's decoding state.

    With CFG the conditioned and null rows run as one batch of 2B; guided logits are
    ``uncond + s * (cond - uncond)`` and both halves are fed the sampled token.
    """

    #: torch.compile backend of the ``compile`` option (tests swap in "eager" to check the tracing only)
    compile_backend: str = "inductor"

    def __init__(self, config: ARSamplerConfig | None = None) -> None:
        self.config = config or ARSamplerConfig()
        self._graphs: dict[tuple, _Run] = {}
        self._compiled_step: Any = None

    def _step_fn(self) -> Any:
        """The step the loop runs: ``_step``, or its compiled form (built once per sampler)."""
        if not self.config.compile:
            return self._step
        if self._compiled_step is None:
            # not fullgraph: an op Dynamo cannot trace runs eagerly between compiled pieces
            self._compiled_step = torch.compile(self._step, backend=self.compile_backend, dynamic=False)
        return self._compiled_step

    @property
    def use_cfg(self) -> bool:
        return self.config.cfg_scale != 1.0

    def guidance(self, k: Tensor | int, num_tokens: int) -> Tensor | float:
        c = self.config
        return guidance_scale(k, num_tokens, c.cfg_scale, c.cfg_schedule == "linear")

    # ------------------------------------------------------------------ one step
    def _draw(self, run: _Run, logits: Tensor) -> None:
        """Guide, filter and draw token ``run.k`` into ``run.codes``."""
        c = self.config
        draw_tokens(logits, run.u, run.k, run.codes, cfg_scale=c.cfg_scale, linear=c.cfg_schedule == "linear",
                    temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, impl=c.draw_impl)

    def _step(self, run: _Run) -> None:
        """Feed token ``k - 1`` (both CFG halves) and draw token ``k``; then ``k += 1``."""
        feed = run.codes.index_select(1, run.k - 1)[:, 0]
        if self.use_cfg:
            feed = torch.cat([feed, feed])
        logits = run.backbone.step(run.state, feed, run.cond)
        self._draw(run, logits)
        run.k.add_(1)

    # ------------------------------------------------------------------ driver
    @torch.inference_mode()
    def sample(
        self,
        backbone: Backbone,
        conditioner: Conditioner,
        labels: Tensor,
        *,
        seed: int = 0,
        index: Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        device = labels.device
        batch = labels.shape[0]
        index = torch.arange(batch, device=device) if index is None else index.to(device)
        return in_fixed_groups(lambda lab, idx: self._sample(backbone, conditioner, lab, idx, seed, dtype),
                               self.config.decode_width, labels, index)

    def _sample(self, backbone: Backbone, conditioner: Conditioner, labels: Tensor, index: Tensor, seed: int,
                dtype: torch.dtype | None) -> Tensor:
        device = labels.device
        batch, n_tok = labels.shape[0], backbone.num_tokens
        cond = conditioner(labels)
        if self.use_cfg:
            cond = Conditioning.cat([cond, conditioner.null(batch, device)])
        if dtype is not None:
            cond = cond.to(dtype)
        graphed = self.config.cuda_graph and device.type == "cuda" and n_tok > 1
        run = self._graph_run(backbone, cond, batch, dtype) if graphed else self._new_run(backbone, cond, batch, dtype)
        if graphed:
            run.cond.copy_(cond)
        # every uniform of the call at once (a hash of seed, image index, token position),
        # so a step reads one column instead of hashing
        run.u.copy_(uniform(seed & 0xFFFFFFFF, index[:, None], torch.arange(n_tok, device=device)[None, :]))
        run.k.zero_()
        logits = backbone.prefill(run.state, run.cond)
        self._draw(run, logits)
        run.k.fill_(1)
        step = self._step_fn()
        for _ in range(1, n_tok):
            if run.graph is not None:
                run.graph.replay()
            else:
                step(run)
        return run.codes.clone()

    def _new_run(self, backbone: Backbone, cond: Conditioning, batch: int, dtype: torch.dtype | None) -> _Run:
        device = cond.prefix.device
        return _Run(
            backbone=backbone,
            state=backbone.init_state(cond.batch_size, device=device, dtype=dtype),
            cond=cond,
            codes=torch.zeros(batch, backbone.num_tokens, dtype=torch.long, device=device),
            u=torch.zeros(batch, backbone.num_tokens, dtype=torch.float64, device=device),
            k=torch.ones(1, dtype=torch.long, device=device),
        )

    @staticmethod
    def _graph_key(backbone: Backbone, cond: Conditioning, batch: int, dtype: torch.dtype | None) -> tuple:
        """What a captured step depends on; the autocast too, so a step captured in fp32 never replays under bf16."""
        return (id(backbone), batch, dtype, active_autocast_dtype(cond.prefix.device), cond.prefix.shape, cond.layers is None,
                cond.prefix_mask is None, str(cond.prefix.device))

    def _graph_run(self, backbone: Backbone, cond: Conditioning, batch: int, dtype: torch.dtype | None) -> _Run:
        key = self._graph_key(backbone, cond, batch, dtype)
        run = self._graphs.get(key)
        if run is not None and run.backbone is backbone:
            return run
        run = self._new_run(backbone, cond.clone(), batch, dtype)
        # warm up on a side stream (allocations, Triton compilation, torch.compile), then capture one step
        step = self._step_fn()
        backbone.prefill(run.state, run.cond)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with _uncached_autocast(cond.prefix.device.type):
            with torch.cuda.stream(stream):
                for _ in range(2):
                    run.k.fill_(1)
                    step(run)
            torch.cuda.current_stream().wait_stream(stream)
            run.k.fill_(1)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step(run)
        run.graph = graph
        self._graphs[key] = run
        return run

    def warmup(self, backbone: Backbone, conditioner: Conditioner, batch_size: int, *,
               device: torch.device | str = "cuda", dtype: torch.dtype | None = None) -> None:
        """Compile kernels and capture the step graph for this batch size ahead of timed work."""
        labels = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.sample(backbone, conditioner, labels, dtype=dtype)

