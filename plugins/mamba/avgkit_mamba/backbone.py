"""The AiM backbone: Mamba-2 blocks over [class position, image tokens].

    x_0     = prefix (the conditioner's class embedding; no position embedding)
    x_{k+1} = word_emb(token_k) + pos_emb(k)                  (k = 0 .. N-2)
    for block i:  residual = h + residual
                  h = gate_i * Mamba2(RMSNorm(residual) * (1 + scale_i) + shift_i)
    out = RMSNorm_final(RMSNorm_f(h + residual)) * (1 + scale_f) + shift_f
    logits = out @ word_emb.T                                  (tied head)

The modulation (shift, scale, gate) comes from whatever conditioner the recipe pairs
it with; without one the block is a plain pre-norm Mamba-2 block. Parameter names
follow the official AiM checkpoints (``backbone.`` prefix removed).

Position numbering: the reference trains image token k at position row k but samples
it at row k + 1. ``positions="consistent"`` (default) uses row k in both;
``positions="reference"`` reproduces the reference's sampler exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from avgkit.errors import AvgkitError
from avgkit.interfaces import Backbone, Conditioning, Modulation
from avgkit.registry import BackboneConfig
from avgkit.runtime.device import active_autocast_dtype
from avgkit_mamba.mixer import Mamba2ChunkedState, Mamba2Mixer, Mamba2State
from avgkit_mamba.ops.dispatch import add_norm_modulate, decode_form_for
from avgkit_mamba.ops.norm_torch import DeferredNorm, rms_norm

#: A prefix of one vector (a class token) enters a recurrent decoding state (or the chunked form's state, its
#: first window left empty) by one recurrent decode step from the zero state, the same arithmetic as the scan over
#: one token: five launches a layer where the chunked scan's forward and the state's extraction took over a
#: hundred, each waiting on the host, in every sampling call (docs/benchmarks.md). False: every prefix through the
#: scan (benchmarks time both).
PREFILL_BY_STEP = True


class MambaBackboneConfig(BackboneConfig):
    d_model: int = Field(768, ge=8, description="width of the residual stream")
    n_layer: int = Field(24, ge=1, description="Mamba-2 blocks")
    d_state: int = Field(128, ge=1, description="SSM state size per head (N)")
    d_conv: int = Field(4, ge=2, description="width of the causal depthwise convolution")
    expand: int = Field(2, ge=1, description="inner width = expand * d_model")
    headdim: int = Field(64, ge=1, description="channels per SSM head (P); heads = inner width / headdim")
    ngroups: int = Field(1, ge=1, description="groups of heads sharing B and C")
    chunk_size: int = Field(256, ge=1, description="chunk length of the training scan (SSD)")
    norm_eps: float = Field(1e-5, description="RMSNorm epsilon")
    residual_in_fp32: bool = Field(True, description="keep the residual stream in fp32 under bf16")
    tie_embeddings: bool = Field(True, description="the output head shares the token embedding table")
    position_embedding: bool = Field(True, description="learned position embeddings (the paper's ablation turns them off)")
    positions: Literal["consistent", "reference"] = Field(
        "consistent", description="row of the position table for image token k when sampling: k, or the reference's k+1"
    )
    token_drop: float = Field(0.0, ge=0, lt=1, description="training: dropout rate on the input embeddings")
    initializer_range: float = Field(0.02, description="std of the normal init of the embedding tables and an untied head")
    impl: Literal["auto", "torch", "triton"] = Field("auto", description="scan kernels: triton on GPU, torch on CPU")
    state_dtype: Literal["auto", "fp32", "bf16", "model", "int8"] = Field(
        "auto", description="dtype of the SSM decoding state: auto (fp32 for an fp32 model, int8 for a half-precision "
        "one or under half-precision autocast), fp32, bf16, the model's dtype, or int8 with an fp32 scale per (head, "
        "head-dim row) (one byte a value); accuracy gate and speed in docs/backbone-mamba.md"
    )
    step_kernel: Literal["two-launch", "one-launch", "fused-in-proj", "auto"] = Field(
        "auto", description="Triton decode step: auto (default), fused-in-proj at 32 rows or fewer (batch 16 with "
        "CFG) and two-launch above (5% more images/s than two-launch at batch 16 on an H100, the same at 64); "
        "two-launch: the conv's launch, then the state update (the mixer's norm left to the next block boundary); "
        "fused-in-proj: the conv, dt and decay in in_proj's epilogue instead of a launch of their own at every "
        "batch (6% fewer images/s at batch 64); or one launch with split state tiles and the next tile's load in "
        "flight (1.8x slower on an H100); docs/benchmarks.md"
    )
    decode_form: Literal["auto", "recurrent", "chunked", "dual"] = Field(
        "recurrent", description="decoding layout: the constant-size SSM state (recurrent); chunked (the state read "
        "every step but written once per decode_chunk tokens, the window's tokens from small caches); auto: chunked "
        "for a one-byte state on Triton kernels (a CUDA device), else recurrent; or per-token caches read by the "
        "dual (quadratic) form (measured slower, with twice the memory; docs/backbone-mamba.md)"
    )
    decode_chunk: int = Field(16, ge=2, description="chunked form: tokens per window (the state is written once a window)")
    max_prefix_len: int = Field(1, ge=1, description="dual form: longest conditioning prefix the caches hold")
    recompute_norms: bool | Literal["auto"] = Field(
        "auto", description="training: recompute the norms' fp32 intermediates in backward instead of keeping them "
        "(less activation memory for a few elementwise passes more: 1.6% of AiM-B's and AiM-L's compiled step on an "
        "H100); auto: only where blocks are checkpointed (activation_checkpointing is not none), where memory is "
        "what the recipe is short of"
    )
    activation_checkpointing: Literal["none", "blocks", "every_n"] = Field(
        "none", description="training: keep only the inputs of checkpointed blocks and recompute the rest in "
        "backward (every block, or one block in checkpoint_every); less memory for about one forward more"
    )
    checkpoint_every: int = Field(2, ge=1, description="activation_checkpointing every_n: checkpoint blocks 0, n, 2n, ...")

    def norms_recomputed(self) -> bool:
        """``recompute_norms`` with ``auto`` resolved."""
        if self.recompute_norms == "auto":
            return self.activation_checkpointing != "none"
        return bool(self.recompute_norms)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class Embeddings(nn.Module):
    def __init__(self, vocab: int, dim: int, positions: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim)
        self.position_embeddings = nn.Embedding(positions, dim) if positions > 0 else None


def modulate(x: Tensor, m: Modulation) -> Tensor:
    return x * (1 + m.scale.unsqueeze(1)) + m.shift.unsqueeze(1)


def add_norm(h: Tensor, residual: Tensor | None, norm: RMSNorm, m: Modulation | None, residual_in_fp32: bool
             ) -> tuple[Tensor, Tensor]:
    """The block boundary over (B, L, D): ``residual += h``, then RMSNorm and the modulation."""
    residual = h if residual is None else h + residual
    if residual_in_fp32:
        residual = residual.float()
    x = norm(residual.to(norm.weight.dtype))
    return (x if m is None else modulate(x, m).to(x.dtype)), residual


def add_norm_step(y: Tensor, gate: Tensor | None, residual: Tensor | None, norm: RMSNorm, m: Modulation | None,
                  impl: str, residual_in_fp32: bool, y_norm: DeferredNorm | None = None) -> tuple[Tensor, Tensor]:
    """One decoding token's boundary: the previous block's ungated output ``y`` (B, D) -> (x, residual).

    The same as :func:`add_norm` after ``gate * y`` (``y`` first scaled by its mixer's
    deferred norm, ``y_norm``); the op (one fused kernel on the Triton path) is chosen by
    :func:`avgkit_mamba.ops.dispatch.add_norm_modulate`.
    """
    return add_norm_modulate(y, gate, residual, norm.weight, norm.eps, None if m is None else m.shift,
                             None if m is None else m.scale, residual_in_fp32, impl, y_norm)


class Block(nn.Module):
    """Add -> RMSNorm -> modulate -> Mamba-2 -> gate; returns (h, residual)."""

    def __init__(self, c: MambaBackboneConfig, layer_idx: int) -> None:
        super().__init__()
        self.residual_in_fp32 = c.residual_in_fp32
        self.recompute = c.norms_recomputed()
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.mixer = Mamba2Mixer(
            c.d_model, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand, headdim=c.headdim,
            ngroups=c.ngroups, chunk_size=c.chunk_size, impl=c.impl, step_kernel=c.step_kernel,
        )
        self.mixer.norm.recompute = self.recompute
        self.layer_idx = layer_idx

    def _pre(self, h: Tensor, residual: Tensor | None, m: Modulation | None) -> tuple[Tensor, Tensor]:
        return add_norm(h, residual, self.norm, m, self.residual_in_fp32)

    @staticmethod
    def _gate(y: Tensor, m: Modulation | None) -> Tensor:
        return y if m is None else m.gate.unsqueeze(1).to(y.dtype) * y

    def forward(self, h: Tensor, residual: Tensor | None, m: Modulation | None, state=None,
                mask: Tensor | None = None, *, checkpointed: bool = False) -> tuple[Tensor, Tensor]:
        if checkpointed and state is None and torch.is_grad_enabled():
            # the whole block is recomputed in backward: only its inputs are kept
            return checkpoint(self._forward, h, residual, m, False, None, mask, use_reentrant=False)
        return self._forward(h, residual, m, self.recompute, state, mask)

    def _forward(self, h: Tensor, residual: Tensor | None, m: Modulation | None, recompute: bool,
                 state=None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if recompute and torch.is_grad_enabled():
            # training: the add/norm/modulate chain's fp32 intermediates are recomputed in backward
            x, residual = checkpoint(self._pre, h, residual, m, use_reentrant=False)
        else:
            x, residual = self._pre(h, residual, m)
        y = self.mixer(x, state=state) if mask is None else self.mixer(x, state=state, mask=mask)
        return self._gate(y, m), residual

    def step(self, y: Tensor, gate: Tensor | None, residual: Tensor | None, m: Modulation | None, state,
             length: Tensor | None = None, y_norm: DeferredNorm | None = None
             ) -> tuple[Tensor, Tensor, DeferredNorm | None]:
        """One token from the previous block's output ``y`` (its gate ``gate``, its deferred norm ``y_norm``):
        returns this block's ungated mixer output (its gate is ``m.gate``), the residual, and the mixer's deferred
        norm (``None`` where the output is normed)."""
        x, residual = add_norm_step(y, gate, residual, self.norm, m, self.mixer.impl, self.residual_in_fp32, y_norm)
        y, y_norm = self.mixer.step_deferred(x, state, length)
        return y, residual, y_norm


@dataclass
class MambaDecodeState:
    """Per-layer conv windows + SSM states (constant size) and the next position."""

    layers: list
    position: Tensor  # (1,) int64 on the device: row of the next image token
    batch_size: int
    length: Tensor | None = None  # (1,) int64: dual form, tokens in the caches; chunked, tokens since prefill


class FinalLayer(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.norm_final = RMSNorm(dim, eps)


class MambaBackbone(Backbone):
    accepts_prefix_mask = True

    def __init__(self, config: MambaBackboneConfig) -> None:
        super().__init__()
        if config.vocab_size is None or config.num_tokens is None:
            raise ValueError("mamba2 backbone needs vocab_size and num_tokens (the recipe fills them from the tokenizer)")
        c = self.config = config
        self.dim, self.num_layers = c.d_model, c.n_layer
        self.vocab_size, self.num_tokens = c.vocab_size, c.num_tokens
        self.embeddings = Embeddings(c.vocab_size, c.d_model, c.num_tokens + 1 if c.position_embedding else 0)
        self.token_dropout = nn.Dropout(c.token_drop)
        self.layers = nn.ModuleList(Block(c, i) for i in range(c.n_layer))
        self.norm_f = RMSNorm(c.d_model, c.norm_eps)
        self.final_layer = FinalLayer(c.d_model, c.norm_eps)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """GPT-2 style: tables N(0, 0.02); out_proj kaiming-uniform / sqrt(layers)."""
        std = self.config.initializer_range
        nn.init.normal_(self.embeddings.word_embeddings.weight, std=std)
        if self.embeddings.position_embeddings is not None:
            nn.init.normal_(self.embeddings.position_embeddings.weight, std=std)
        for block in self.layers:
            w = block.mixer.out_proj.weight
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            with torch.no_grad():
                w /= math.sqrt(self.num_layers)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=std)

    def _checkpointed(self, i: int) -> bool:
        mode = self.config.activation_checkpointing
        return self.training and (mode == "blocks" or (mode == "every_n" and i % self.config.checkpoint_every == 0))

    def embedding_parameters(self) -> list[nn.Parameter]:
        e = self.embeddings
        return [e.word_embeddings.weight] + ([e.position_embeddings.weight] if e.position_embeddings is not None else [])

    # ------------------------------------------------------------------ pieces
    def _embed(self, tokens: Tensor, rows: Tensor) -> Tensor:
        x = self.embeddings.word_embeddings(tokens)
        if self.embeddings.position_embeddings is not None:
            x = x + self.embeddings.position_embeddings(rows)
        return self.token_dropout(x)

    def _head(self, h: Tensor, residual: Tensor, cond: Conditioning) -> Tensor:
        return F.linear(*self._head_input(h, residual, cond))

    def _head_input(self, h: Tensor, residual: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor]:
        return self._final(self.norm_f((h + residual).to(self.norm_f.weight.dtype)), cond)

    def _final(self, x: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor]:
        """norm_f's output -> (final norm and final modulation, the head's weight)."""
        x = self.final_layer.norm_final(x)
        m = cond.final_modulation()
        if m is not None:
            x = modulate(x, m).to(x.dtype)
        return x, self._head_weight()

    def _head_weight(self) -> Tensor:
        return self.embeddings.word_embeddings.weight if self.lm_head is None else self.lm_head.weight

    # ------------------------------------------------------------------ training
    @staticmethod
    def _sequence_mask(cond: Conditioning, extra: int) -> Tensor | None:
        """(B, P + extra) bool over [prefix, tokens], or None without prefix padding."""
        if cond.prefix_mask is None:
            return None
        ones = torch.ones(cond.batch_size, extra, dtype=torch.bool, device=cond.prefix_mask.device)
        return torch.cat([cond.prefix_mask, ones], 1)

    def _trunk(self, codes: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor]:
        n = codes.shape[1]
        cond = cond.left_aligned()  # padding first, where the recurrent state is still zero
        mask = self._sequence_mask(cond, n - 1)
        rows = torch.arange(n - 1, device=codes.device)
        h = torch.cat([cond.prefix.to(self.embeddings.word_embeddings.weight.dtype), self._embed(codes[:, :-1], rows)], 1)
        residual = None
        for i, block in enumerate(self.layers):
            h, residual = block(h, residual, cond.modulation(i), mask=mask, checkpointed=self._checkpointed(i))
        p = cond.prefix_len - 1  # rows before it predict no image token
        return h[:, p:], residual[:, p:]

    def forward(self, codes: Tensor, cond: Conditioning) -> Tensor:
        return self._head(*self._trunk(codes, cond), cond)

    def head_features(self, codes: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor]:
        """The head's input (B, N, D) and weight (V, D): the training loss forms the logits by chunks."""
        return self._head_input(*self._trunk(codes, cond), cond)

    # ------------------------------------------------------------------ generation
    def _ssm_dtype(self, model_dtype: torch.dtype, autocast: torch.dtype | None) -> torch.dtype:
        """The SSM state's dtype for a model in ``model_dtype`` decoding under ``autocast``. auto: an fp32 model
        keeps the exact state; a half-precision one (its dtype, or the autocast it decodes under) gets the
        one-byte state, which passed the accuracy gate and decodes fastest (docs/backbone-mamba.md)."""
        half = model_dtype != torch.float32 or autocast not in (None, torch.float32)
        return {"auto": torch.int8 if half else torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16,
                "model": model_dtype, "int8": torch.int8}[self.config.state_dtype]

    def _decode_form(self, ssm_dtype: torch.dtype, device: torch.device) -> str:
        """``decode_form`` resolved (``auto``: ``dispatch.decode_form_for``)."""
        if self.config.decode_form != "auto":
            return self.config.decode_form
        return decode_form_for(ssm_dtype, self.layers[0].mixer.impl, device)

    def decode_settings(self, autocast: torch.dtype | None = None) -> dict[str, Any]:
        """The decoding layout and the dtype its state resolves to (``state_dtype: auto`` follows the precision,
        ``decode_form: auto`` the state and the device)."""
        if self.config.decode_form == "dual":  # its caches follow the model's dtype
            return {"decode_form": "dual"}
        weight = self.embeddings.word_embeddings.weight
        ssm = self._ssm_dtype(weight.dtype, autocast)
        form = self._decode_form(ssm, weight.device)
        return {"decode_form": form, "state_dtype": str(ssm).removeprefix("torch."),
                **({"decode_chunk": self.config.decode_chunk} if form == "chunked" else {})}

    def init_state(self, batch_size, *, device=None, dtype=None) -> MambaDecodeState:
        device = device if device is not None else self.embeddings.word_embeddings.weight.device
        model_dtype = dtype or self.embeddings.word_embeddings.weight.dtype
        position = torch.zeros(1, dtype=torch.long, device=device)
        if self.config.decode_form == "dual":
            max_len = self.config.max_prefix_len + self.num_tokens
            layers = [b.mixer.allocate_dual_state(batch_size, max_len, device=device, dtype=model_dtype)
                      for b in self.layers]
            return MambaDecodeState(layers, position, batch_size, torch.zeros(1, dtype=torch.long, device=device))
        ssm_dtype = self._ssm_dtype(model_dtype, active_autocast_dtype(device))
        if self._decode_form(ssm_dtype, torch.device(device)) == "chunked":
            layers = [b.mixer.allocate_chunked_state(batch_size, self.config.decode_chunk, device=device,
                                                     dtype=model_dtype, ssm_dtype=ssm_dtype) for b in self.layers]
            return MambaDecodeState(layers, position, batch_size, torch.zeros(1, dtype=torch.long, device=device))
        layers = [b.mixer.allocate_state(batch_size, device=device, dtype=model_dtype, ssm_dtype=ssm_dtype)
                  for b in self.layers]
        return MambaDecodeState(layers, position, batch_size)

    def prefill(self, state: MambaDecodeState, cond: Conditioning) -> Tensor:
        chunked = isinstance(state.layers[0], Mamba2ChunkedState)
        if PREFILL_BY_STEP and (state.length is None or chunked) and cond.prefix_len == 1 and \
                cond.prefix_mask is None:
            for layer_state in state.layers:
                layer_state.zero_()
            # the chunked form's SSM state and conv windows are the recurrent step's (views), its window empty
            recurrent = state if not chunked else MambaDecodeState(
                [Mamba2State(s.conv, s.ssm, s.scale) for s in state.layers], state.position, state.batch_size)
            logits = self._step_from(recurrent, cond.prefix[:, 0].to(self.embeddings.word_embeddings.weight.dtype),
                                     cond)
            if chunked:
                state.length.fill_(0)
            state.position.fill_(1 if self.config.positions == "reference" else 0)
            return logits
        if state.length is not None:  # a chunked or dual-form state counts its tokens
            if not chunked and cond.prefix_len > self.config.max_prefix_len:
                raise AvgkitError(f"conditioning prefix has {cond.prefix_len} vectors but the dual-form caches hold "
                                 f"{self.config.max_prefix_len}; set backbone max_prefix_len: {cond.prefix_len}")
            # chunked: the prefix goes into the SSM state and the first window starts empty
            state.length.fill_(0 if chunked else cond.prefix_len)
        cond = cond.left_aligned()
        mask = self._sequence_mask(cond, 0)
        h, residual = cond.prefix.to(self.embeddings.word_embeddings.weight.dtype), None
        for layer_state in state.layers:
            layer_state.zero_()
        for i, block in enumerate(self.layers):
            h, residual = block(h, residual, cond.modulation(i), state=state.layers[i], mask=mask)
        state.position.fill_(1 if self.config.positions == "reference" else 0)
        return self._head(h[:, -1:], residual[:, -1:], cond)[:, 0]

    def step(self, state: MambaDecodeState, tokens: Tensor, cond: Conditioning) -> Tensor:
        logits = self._step_from(state, self._embed(tokens[:, None], state.position)[:, 0], cond)
        state.position.add_(1)
        return logits

    def _step_from(self, state: MambaDecodeState, y: Tensor, cond: Conditioning) -> Tensor:
        """One decode step from the first block's input ``y`` (b, d): the states advanced, the logits returned."""
        gate, residual, y_norm = None, None, None
        for i, block in enumerate(self.layers):
            m = cond.modulation(i)
            y, residual, y_norm = block.step(y, gate, residual, m, state.layers[i], state.length, y_norm)
            gate = None if m is None else m.gate
        if state.length is not None:
            state.length.add_(1)
        # the last boundary (residual add, norm_f, then the final layer's norm and modulation) as one op, as
        # between blocks: ``_head_input``'s chain
        m, nf = cond.final_modulation(), self.final_layer.norm_final
        x, _ = add_norm_modulate(y, gate, residual, self.norm_f.weight, self.norm_f.eps,
                                 None if m is None else m.shift, None if m is None else m.scale,
                                 self.config.residual_in_fp32, self.layers[-1].mixer.impl, y_norm,
                                 second_norm=(nf.weight, nf.eps))
        return F.linear(x, self._head_weight())

    def select_state(self, state: MambaDecodeState, index: Tensor) -> MambaDecodeState:
        layers = [s.select(index) for s in state.layers]
        length = None if state.length is None else state.length.clone()
        return MambaDecodeState(layers, state.position.clone(), int(index.numel()), length)
