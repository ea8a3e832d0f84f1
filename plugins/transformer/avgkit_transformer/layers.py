"""Building blocks: RMSNorm, SwiGLU feed-forward, rotary causal attention, the block.

Every block optionally takes an adaLN :class:`~avgkit.interfaces.Modulation`
``(shift, scale, gate)`` from the conditioner and applies the same triple around both
sub-layers (see :class:`Block`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avgkit.interfaces import Modulation
from avgkit_transformer.config import TransformerConfig
from avgkit_transformer.decode_kernel import decode_attention, triton_available
from avgkit_transformer.rope import apply_rotary


def _math_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention as matmul, softmax, matmul: the same bits on every call of the same shapes (cuBLAS without
    atomics), and under torch.compile inductor fuses it as it does LlamaGen's compiled step."""
    if k.shape[1] != q.shape[1]:  # grouped-query attention: each kv head serves a group of q heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``, normalised in float32 and cast back (as LlamaGen)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with no biases (LlamaGen's w1, w3, w2)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(F.silu(self.gate(x)) * self.up(x)))


class Attention(nn.Module):
    """Causal multi-head (optionally grouped-query) attention with 2D rotary q/k.

    One fused ``qkv`` projection whose rows are ``[q (heads*hd) | k (kv*hd) | v (kv*hd)]``.
    Without a cache it attends causally within ``x``; with a cache it first writes this
    call's keys/values at ``positions`` and then attends over the whole preallocated
    cache under ``mask``, so a decoding step has static shapes.
    """

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.heads, c.n_kv_heads, c.head_dim
        self.qkv = nn.Linear(c.dim, (c.heads + 2 * c.n_kv_heads) * c.head_dim, bias=False)
        self.proj = nn.Linear(c.dim, c.dim, bias=False)
        self.attn_dropout = c.attn_dropout
        self.decode_attention = c.decode_attention
        self.resid_dropout = nn.Dropout(c.resid_dropout)

    def forward(
        self,
        x: Tensor,
        table: Tensor,
        cache: tuple[Tensor, Tensor] | None = None,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        b, t, _ = x.shape
        kv_width = self.kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([self.heads * self.head_dim, kv_width, kv_width], dim=-1)
        q = apply_rotary(q.view(b, t, self.heads, self.head_dim), table).transpose(1, 2)
        k = apply_rotary(k.view(b, t, self.kv_heads, self.head_dim), table).transpose(1, 2)
        v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if cache is not None:
            # this layer's (keys, values), each (B, kv_heads, max_len, head_dim), written in place
            k_cache, v_cache = cache
            k_cache.index_copy_(2, positions, k.to(k_cache.dtype))
            v_cache.index_copy_(2, positions, v.to(v_cache.dtype))
            k, v = k_cache, v_cache
        kind = self._decode_kind(q) if cache is not None else "sdpa"
        if kind == "triton" and t == 1:
            out = decode_attention(q, k, v, mask, positions)
        elif kind in ("math", "triton"):  # a prefill of several positions with the Triton step
            out = _math_attention(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=cache is None and mask is None,
                dropout_p=self.attn_dropout if self.training else 0.0,
                enable_gqa=self.kv_heads != self.heads,
            )
        return self.resid_dropout(self.proj(out.transpose(1, 2).reshape(b, t, -1)))

    def _decode_kind(self, q: Tensor) -> str:
        if self.decode_attention == "auto":
            return "triton" if q.is_cuda and triton_available() else "math"
        return self.decode_attention


def modulate(x: Tensor, m: Modulation | None) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with ``(B, D)`` modulation broadcast over positions."""
    if m is None:
        return x
    return x * (1 + m.scale.to(x.dtype)[:, None]) + m.shift.to(x.dtype)[:, None]


def gated(y: Tensor, m: Modulation | None) -> Tensor:
    if m is None or m.gate is None:
        return y
    return y * m.gate.to(y.dtype)[:, None]


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: drop a whole residual branch per sample, rescaling the kept ones."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Block(nn.Module):
    """Pre-norm transformer block; with modulation ``m = (shift, scale, gate)``::

        h = x + gate * Attention(RMSNorm_attn(x) * (1 + scale) + shift)
        y = h + gate * SwiGLU(RMSNorm_ffn(h) * (1 + scale) + shift)

    The one triple per block that the conditioning contract provides is shared by both
    sub-layers. Without modulation this is exactly LlamaGen's block.
    """

    def __init__(self, c: TransformerConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(c.dim, c.norm_eps)
        self.attn = Attention(c)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)
        self.ffn = SwiGLU(c.dim, c.ffn_hidden, c.ffn_dropout)
        self.drop_path_rate = drop_path_rate

    def forward(
        self,
        x: Tensor,
        table: Tensor,
        m: Modulation | None,
        cache: tuple[Tensor, Tensor] | None = None,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        a = self.attn(modulate(self.attn_norm(x), m), table, cache, positions, mask)
        x = x + drop_path(gated(a, m), self.drop_path_rate, self.training)
        f = self.ffn(modulate(self.ffn_norm(x), m))
        return x + drop_path(gated(f, m), self.drop_path_rate, self.training)
