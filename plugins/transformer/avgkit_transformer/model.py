"""The decoder-only transformer backbone (LlamaGen's GPT) with a preallocated KV cache.

Sequence layout: ``[prefix (P vectors from the conditioner), image tokens 0..N-2]``;
position ``P - 1 + k`` predicts image token ``k``. Image token ``k`` is rotated by its
grid cell ``k`` (row ``k // width``, column ``k % width``) in training and decoding
alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import ValidationError
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from avgkit.interfaces import Backbone, Conditioning
from avgkit.runtime.device import active_autocast_dtype
from avgkit_transformer.config import TransformerConfig
from avgkit_transformer.errors import TransformerError
from avgkit_transformer.layers import Block, RMSNorm, modulate
from avgkit_transformer.rope import rotation_table


@dataclass
class KVCacheState:
    """Decoding state: every layer's keys and values, allocated once at full length.

    ``keys[i]`` and ``values[i]`` are layer ``i``'s own ``(B, kv_heads, max_len, head_dim)``
    tensors; ``pos`` is a 0-dim int64 tensor holding the next sequence position to write.
    A step writes one row of each base tensor in place (never through a view of a larger
    one), so it captures in a CUDA graph and compiles without copying the cache: under
    ``torch.compile`` an in-place write into a view of one big cache is functionalized
    into a rewrite of the whole base tensor, per layer.
    """

    keys: list[Tensor]
    values: list[Tensor]
    pos: Tensor
    batch_size: int
    prefix_len: int = 0
    #: (B, max_len) bool, False at padded prefix positions; None while the prefix has no padding
    key_valid: Tensor | None = None

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype


class TransformerBackbone(Backbone):
    """LlamaGen-style GPT: RMSNorm, SwiGLU, 2D RoPE, causal SDPA, untied (or tied) head.

    A padded prefix (``cond.prefix_mask``) is masked out of attention: no position
    attends to a padded key except the padded position itself (which keeps its softmax
    finite), and prefix positions carry no position, so the logits do not depend on
    the amount or place of the padding.
    """

    accepts_prefix_mask = True

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if config.vocab_size is None or config.num_tokens is None:
            raise TransformerError(
                "transformer needs vocab_size and num_tokens; build it from a recipe (the tokenizer sets them) "
                "or pass them explicitly"
            )
        try:  # the builder fills vocab_size/num_tokens with model_copy, which skips validation
            config = TransformerConfig.model_validate(config.model_dump())
        except ValidationError as err:
            raise TransformerError(f"transformer: {err.errors()[0]['msg']}") from None
        self.config = config
        self.dim, self.num_layers = config.dim, config.layers
        self.vocab_size, self.num_tokens = config.vocab_size, config.num_tokens
        self.tok_embed = nn.Embedding(config.vocab_size, config.dim)
        self.token_dropout = nn.Dropout(config.token_dropout)
        rates = torch.linspace(0, config.drop_path, config.layers, device="cpu").tolist()
        self.blocks = nn.ModuleList(Block(config, r) for r in rates)
        self.norm_f = RMSNorm(config.dim, config.norm_eps)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_head:
            self.head.weight = self.tok_embed.weight

    def reset_parameters(self) -> None:
        """LlamaGen init: N(0, init_std) for linear and embedding weights, zero head."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=self.config.init_std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        if self.config.zero_head and not self.config.tie_head:
            nn.init.zeros_(self.head.weight)

    # ------------------------------------------------------------------ shared pieces
    def _table(self, positions: Tensor, prefix_len: int | Tensor) -> Tensor:
        c = self.config
        return rotation_table(
            positions - prefix_len,
            positions < prefix_len,
            width=c.width,
            head_dim=c.head_dim,
            base=c.rope_base,
            prefix_rope=c.prefix_rope,
        )

    def _head(self, x: Tensor, cond: Conditioning) -> Tensor:
        return self.head(self._head_input(x, cond)).float()

    def _head_input(self, x: Tensor, cond: Conditioning) -> Tensor:
        return modulate(self.norm_f(x), cond.final_modulation())

    def _prefix(self, cond: Conditioning) -> Tensor:
        if cond.prefix.shape[-1] != self.dim:
            raise TransformerError(
                f"conditioning width {cond.prefix.shape[-1]} != transformer dim {self.dim}; "
                "build the conditioner with the backbone's dim"
            )
        return cond.prefix.to(self.tok_embed.weight.dtype)

    # ------------------------------------------------------------------ training
    def _checkpointed(self, i: int) -> bool:
        mode = self.config.activation_checkpointing
        return (self.training and torch.is_grad_enabled()
                and (mode == "blocks" or (mode == "every_n" and i % self.config.checkpoint_every == 0)))

    def _trunk(self, codes: Tensor, cond: Conditioning) -> Tensor:
        cond = cond.left_aligned()  # the last prefix position, which predicts token 0, is a real one
        prefix = self._prefix(cond)
        p = prefix.shape[1]
        x = self.token_dropout(torch.cat([prefix, self.tok_embed(codes[:, :-1])], dim=1))
        t = x.shape[1]
        positions = torch.arange(t, device=x.device)
        table = self._table(positions, p)
        mask = None
        if cond.prefix_mask is not None:
            valid = torch.cat([cond.prefix_mask, cond.prefix_mask.new_ones(x.shape[0], t - p)], 1)
            mask = self._padded_mask(valid, positions, positions)
        for i, block in enumerate(self.blocks):
            if self._checkpointed(i):  # only the block's input is kept; the rest is recomputed in backward
                x = checkpoint(block, x, table, cond.modulation(i), None, None, mask, use_reentrant=False)
            else:
                x = block(x, table, cond.modulation(i), mask=mask)
        return x[:, p - 1 :]

    def forward(self, codes: Tensor, cond: Conditioning) -> Tensor:
        return self._head(self._trunk(codes, cond), cond)

    def head_features(self, codes: Tensor, cond: Conditioning) -> tuple[Tensor, Tensor]:
        """The head's input (B, N, D) and weight (V, D): the training loss forms the logits by chunks."""
        return self._head_input(self._trunk(codes, cond), cond), self.head.weight

    @staticmethod
    def _padded_mask(valid: Tensor, queries: Tensor, keys: Tensor) -> Tensor:
        """(B, 1, Tq, Tk) bool: causal, no padded key, except a position's own."""
        causal = keys[None, :] <= queries[:, None]
        own = keys[None, :] == queries[:, None]
        return (causal[None] & (valid[:, None, :] | own[None]))[:, None]

    # ------------------------------------------------------------------ generation
    def init_state(self, batch_size: int, *, device=None, dtype=None) -> KVCacheState:
        c = self.config
        ref = self.tok_embed.weight
        max_len = c.max_prefix_len + c.num_tokens
        shape = (batch_size, c.n_kv_heads, max_len, c.head_dim)
        device = torch.device(device if device is not None else ref.device)
        # under half-precision autocast (--precision bf16) the keys and values are half: store them so
        factory = {"device": device, "dtype": dtype or active_autocast_dtype(device) or ref.dtype}
        keys = [torch.zeros(shape, **factory) for _ in range(c.layers)]
        values = [torch.zeros(shape, **factory) for _ in range(c.layers)]
        pos = torch.zeros((), dtype=torch.long, device=keys[0].device)
        for t in (*keys, *values, pos):
            # fixed addresses: a step compiled with mode="reduce-overhead" may then update them in
            # place inside inductor's CUDA graphs (otherwise it skips graphs for mutated inputs)
            torch._dynamo.mark_static_address(t)
        return KVCacheState(keys, values, pos, batch_size)

    def _decode(self, state: KVCacheState, x: Tensor, positions: Tensor, cond: Conditioning) -> Tensor:
        table = self._table(positions, state.prefix_len)
        keys = torch.arange(state.max_len, device=x.device)
        if state.key_valid is not None:
            mask = self._padded_mask(state.key_valid, positions, keys)
        else:
            mask = keys[None, :] <= positions[:, None]  # (T, max_len): causal over the filled cache
        x = x.to(state.dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, table, cond.modulation(i), (state.keys[i], state.values[i]), positions, mask)
        return self._head(x[:, -1:], cond)[:, 0]

    def prefill(self, state: KVCacheState, cond: Conditioning) -> Tensor:
        cond = cond.left_aligned()
        prefix = self._prefix(cond)
        p = prefix.shape[1]
        if p > self.config.max_prefix_len:
            raise TransformerError(
                f"conditioning prefix has {p} vectors but the cache holds {self.config.max_prefix_len}; "
                f"set backbone max_prefix_len: {p}"
            )
        if cond.batch_size != state.batch_size:
            raise TransformerError(f"conditioning batch {cond.batch_size} != decoding state batch {state.batch_size}")
        state.prefix_len = p
        if cond.prefix_mask is not None:
            if state.key_valid is None:  # allocated once, then rewritten in place (a captured step reads it)
                state.key_valid = torch.ones(state.batch_size, state.max_len, dtype=torch.bool, device=state.pos.device)
            state.key_valid.fill_(True)
            state.key_valid[:, :p] = cond.prefix_mask
        else:
            state.key_valid = None
        logits = self._decode(state, self.token_dropout(prefix), torch.arange(p, device=state.pos.device), cond)
        state.pos.fill_(p)
        return logits

    def step(self, state: KVCacheState, tokens: Tensor, cond: Conditioning) -> Tensor:
        x = self.token_dropout(self.tok_embed(tokens)[:, None])
        logits = self._decode(state, x, state.pos.view(1), cond)
        state.pos.add_(1)
        return logits

    def select_state(self, state: KVCacheState, index: Tensor) -> KVCacheState:
        index = index.to(state.pos.device)
        valid = None if state.key_valid is None else state.key_valid.index_select(0, index)
        return KVCacheState([k.index_select(0, index) for k in state.keys], [v.index_select(0, index) for v in state.values],
                            state.pos.clone(), int(index.numel()), state.prefix_len, valid)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The token table (also the head when tied); an untied head counts as non-embedding."""
        return [self.tok_embed.weight]
