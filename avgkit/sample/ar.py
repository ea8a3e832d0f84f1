"""The built-in autoregressive sampler: CFG, temperature, top-k, top-p, per-image seeds.

One decoding step (backbone step -> CFG combine -> filter -> draw -> feed) is written
once, on device tensors only (the step index included), so the same function runs
eagerly on the CPU and is captured into a CUDA graph on the GPU. Graphs are cached per
(backbone, batch, dtype, settings) and replayed across calls.

With ``lanes`` > 1 a batch decodes as that many independent groups of images, each with
its own decoding state; one CUDA graph replays every lane's step, each on its own stream,
so the GPU runs one lane's memory-bound kernels (a recurrent state update, attention over
a cache) beside another's latency-bound ones (small projections, norms, the draw).

With ``compile`` the step goes through ``torch.compile`` first (inductor's fused
kernels), and that compiled step is what the CUDA graph captures: the graph is ours,
not inductor's cudagraph trees, so a backbone that updates its decoding state in place
(a KV cache, a position counter, a recurrent state) compiles and replays as it is.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from avgkit.interfaces import Backbone, Conditioner, Conditioning
from avgkit.registry import ComponentConfig
from avgkit.runtime.device import active_autocast_dtype
from avgkit.sample.filtering import sample_logits
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
    lanes: int = Field(
        1, ge=1, description="decode each batch as this many independent groups of images (lanes), replayed side "
        "by side from one CUDA graph on as many streams (one after another without a graph); like decode_width, "
        "part of the batch shape a GPU image depends on"
    )
    decode_width: int | None = Field(
        None, ge=1, description="decode in groups of exactly this many images (the last one padded): every "
        "matrix kernel then sees one shape, so GPU images no longer depend on the batch size; None decodes "
        "each batch as given"
    )


@dataclass
class _Run:
    """Everything one lane's decoding loop touches, as fixed device buffers."""

    backbone: Backbone
    state: Any
    cond: Conditioning
    codes: Tensor  # (B, N)
    u: Tensor  # (B, N) float64: the uniform each image draws each token with
    k: Tensor  # (1,) int64: index of the token being drawn


@dataclass
class _Lanes:
    """A batch's lanes and the CUDA graph that steps all of them (None: stepped eagerly)."""

    runs: list[_Run]
    graph: Any = None
    streams: list = field(default_factory=list)  # kept alive with the graph that forks onto them


def lane_bounds(batch: int, lanes: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each lane: ``lanes`` groups (at most ``batch``), the first ones a row larger."""
    n = min(lanes, batch)
    size, extra = divmod(batch, n)
    bounds, start = [], 0
    for i in range(n):
        stop = start + size + (i < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


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
    #: with lanes, the first lane's stream at high priority: its kernels go first, the others fill what it leaves
    lane_priority: bool = False

    def __init__(self, config: ARSamplerConfig | None = None) -> None:
        self.config = config or ARSamplerConfig()
        self._graphs: dict[tuple, _Lanes] = {}
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
        if c.cfg_schedule == "linear" and num_tokens > 1:
            return 1.0 + (c.cfg_scale - 1.0) * k / (num_tokens - 1)
        return c.cfg_scale

    # ------------------------------------------------------------------ one step
    def _draw(self, run: _Run, logits: Tensor) -> None:
        """Guide, filter and draw token ``run.k`` into ``run.codes``."""
        c = self.config
        n_tok = run.codes.shape[1]
        logits = logits.float()
        if self.use_cfg:
            cond_l, uncond_l = logits.chunk(2)
            scale = self.guidance(run.k.float().view(1, 1), n_tok)
            logits = uncond_l + scale * (cond_l - uncond_l)
        u = run.u.index_select(1, run.k)[:, 0]
        tok = sample_logits(logits, u, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p)
        run.codes.index_copy_(1, run.k, tok[:, None])

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
        n_tok = backbone.num_tokens
        bounds = lane_bounds(labels.shape[0], self.config.lanes)
        conds = [self._conditioning(conditioner, labels[a:b], dtype) for a, b in bounds]
        graphed = self.config.cuda_graph and device.type == "cuda" and n_tok > 1
        if graphed:
            lanes = self._graph_lanes(backbone, conds, dtype)
            for run, cond in zip(lanes.runs, conds, strict=True):
                run.cond.copy_(cond)
        else:
            lanes = _Lanes([self._new_run(backbone, cond, b - a, dtype)
                            for cond, (a, b) in zip(conds, bounds, strict=True)])
        positions = torch.arange(n_tok, device=device)[None, :]
        for run, (a, b) in zip(lanes.runs, bounds, strict=True):
            # every uniform of the call at once (a hash of seed, image index, token position),
            # so a step reads one column instead of hashing
            run.u.copy_(uniform(seed & 0xFFFFFFFF, index[a:b, None], positions))
            run.k.zero_()
            self._draw(run, backbone.prefill(run.state, run.cond))
            run.k.fill_(1)
        step = self._step_fn()
        for _ in range(1, n_tok):
            if lanes.graph is not None:
                lanes.graph.replay()
            else:
                for run in lanes.runs:
                    step(run)
        return torch.cat([run.codes for run in lanes.runs]) if len(lanes.runs) > 1 else lanes.runs[0].codes.clone()

    def _conditioning(self, conditioner: Conditioner, labels: Tensor, dtype: torch.dtype | None) -> Conditioning:
        """The rows a lane decodes: its labels' conditioning, then (CFG) as many null rows."""
        cond = conditioner(labels)
        if self.use_cfg:
            cond = Conditioning.cat([cond, conditioner.null(labels.shape[0], labels.device)])
        return cond if dtype is None else cond.to(dtype)

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

    def _graph_lanes(self, backbone: Backbone, conds: list[Conditioning], dtype: torch.dtype | None) -> _Lanes:
        key = tuple(self._graph_key(backbone, cond, cond.batch_size // (2 if self.use_cfg else 1), dtype)
                    for cond in conds)
        lanes = self._graphs.get(key)
        if lanes is not None and lanes.runs[0].backbone is backbone:
            return lanes
        runs = [self._new_run(backbone, cond.clone(), cond.batch_size // (2 if self.use_cfg else 1), dtype)
                for cond in conds]
        # warm up on a side stream (allocations, Triton compilation, torch.compile), then capture one step
        step = self._step_fn()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with _uncached_autocast(conds[0].prefix.device.type):
            with torch.cuda.stream(side):
                for run in runs:
                    backbone.prefill(run.state, run.cond)
                    for _ in range(2):
                        run.k.fill_(1)
                        step(run)
            torch.cuda.current_stream().wait_stream(side)
            for run in runs:
                run.k.fill_(1)
            lanes = _Lanes(runs, torch.cuda.CUDAGraph())
            if len(runs) > 1:
                high, _ = torch.cuda.Stream.priority_range()  # (greatest, least): greatest is the lowest number
                lanes.streams = [torch.cuda.Stream(priority=high if self.lane_priority and i == 0 else 0)
                                 for i in range(len(runs))]
            with torch.cuda.graph(lanes.graph):
                if len(runs) == 1:
                    step(runs[0])
                else:  # fork each lane onto its own stream and join them: one replay steps every lane
                    main = torch.cuda.current_stream()
                    for run, stream in zip(runs, lanes.streams, strict=True):
                        stream.wait_stream(main)
                        with torch.cuda.stream(stream):
                            step(run)
                    for stream in lanes.streams:
                        main.wait_stream(stream)
        self._graphs[key] = lanes
        return lanes

    def warmup(self, backbone: Backbone, conditioner: Conditioner, batch_size: int, *,
               device: torch.device | str = "cuda", dtype: torch.dtype | None = None) -> None:
        """Compile kernels and capture the step graph for this batch size ahead of timed work."""
        labels = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.sample(backbone, conditioner, labels, dtype=dtype)

