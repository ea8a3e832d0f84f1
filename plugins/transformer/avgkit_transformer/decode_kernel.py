"""One decoding step's attention over the KV cache as one Triton kernel.

One program per (row, query head) reads only the filled part of the cache (keys
``0..position``, taken from the device tensor ``positions`` so a captured or compiled step
keeps static shapes) in blocks of ``BLOCK_N`` keys, with an online softmax in fp32. The
keys are visited in a fixed order by one program, so the result is the same bits on every
call and at every batch size: no split over the keys, no atomics. PyTorch's fused
attention gives neither guarantee for a one-query step, and matmul-softmax-matmul reads
the whole preallocated cache in three passes.

The kernel is a PyTorch custom op, so ``torch.compile`` treats it as one opaque call
inside its graph (and its CUDA graph), with no graph break.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import Tensor

__all__ = ["decode_attention", "triton_available"]

BLOCK_N = 64


@torch.compiler.assume_constant_result  # traced as a constant (no functools.cache: Dynamo warns about tracing it)
def triton_available() -> bool:
    """Whether Triton is installed (PyTorch's Linux builds bring it)."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention_kernel(
        q_ptr, k_ptr, v_ptr, mask_ptr, pos_ptr, out_ptr,
        heads, group, dim, scale,
        s_q_b, s_q_h, s_k_b, s_k_h, s_k_l, s_v_b, s_v_h, s_v_l, s_m_b,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bi = (pid // heads).to(tl.int64)
        hi = pid % heads
        kh = hi // group  # grouped-query attention: the kv head serving this query head
        offs_d = tl.arange(0, BLOCK_D)
        dm = offs_d < dim
        q = tl.load(q_ptr + bi * s_q_b + hi * s_q_h + offs_d, mask=dm, other=0.0).to(tl.float32) * scale
        n_keys = tl.load(pos_ptr) + 1
        m_i = tl.full((), float("-inf"), tl.float32)
        l_i = tl.zeros((), tl.float32)
        acc = tl.zeros((BLOCK_D,), tl.float32)
        k_base = k_ptr + bi * s_k_b + kh * s_k_h
        v_base = v_ptr + bi * s_v_b + kh * s_v_h
        for start in range(0, n_keys, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            nm = offs_n < n_keys
            keep = nm & (tl.load(mask_ptr + bi * s_m_b + offs_n, mask=nm, other=0) != 0)
            tile = nm[:, None] & dm[None, :]
            k = tl.load(k_base + offs_n[:, None] * s_k_l + offs_d[None, :], mask=tile, other=0.0)
            s = tl.where(keep, tl.sum(k.to(tl.float32) * q[None, :], axis=1), float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block of masked keys only: adds nothing
            alpha = tl.exp(m_i - m_ref)
            p = tl.exp(s - m_ref)
            v = tl.load(v_base + offs_n[:, None] * s_v_l + offs_d[None, :], mask=tile, other=0.0)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
        out = acc / l_i
        tl.store(out_ptr + (bi * heads + hi) * dim + offs_d, out.to(out_ptr.dtype.element_ty), mask=dm)

    return decode_attention_kernel


@torch.library.custom_op("avgkit_transformer::decode_attention", mutates_args=())
def decode_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
    """Attention of one query per row over the cache: (B, H, 1, D) in ``q``'s dtype.

    ``k``, ``v`` (B, KV, L, D) with unit stride in D; ``mask`` (B or 1, L) bool, True where
    a key may be attended (keys past ``positions[0]`` are never read); ``positions`` (1,)
    int64, this step's position, whose key and value are already in the cache.
    """
    import triton

    b, heads, _, dim = q.shape
    out = torch.empty(b, heads, 1, dim, device=q.device, dtype=q.dtype)
    mask_bytes = mask.reshape(mask.shape[0], mask.shape[-1]).view(torch.uint8)
    _kernel()[(b * heads,)](
        q, k, v, mask_bytes, positions, out,
        heads, heads // k.shape[1], dim, dim**-0.5,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        mask_bytes.stride(0) if mask_bytes.shape[0] > 1 else 0,
        BLOCK_N=BLOCK_N, BLOCK_D=triton.next_power_of_2(dim),
    )
    return out


@decode_attention.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
    return q.new_empty(q.shape[0], q.shape[1], 1, q.shape[3])
