"""Triton kernel for a sampling step's draw without top-k or top-p: one launch instead of about eighteen.

The PyTorch draw (:func:`avgkit.sample.filtering.draw_tokens_torch`) combines the CFG halves,
divides by the temperature, takes the softmax and picks the first token whose float64
cumulative probability exceeds ``u`` times the total: some eighteen small kernels a step,
which at batch 16 cost about as much as a tenth of AiM-B's whole step. Here one program per
image does it all over its row, in blocks, reading the logits from L2 three times:

1. the guided logits' maximum and the sum of their exponentials (an online softmax);
2. the probabilities, their float64 total and the most likely token (the fallback);
3. the float64 running sum, block by block, up to the first token that passes ``u`` times
   the total, which it writes into the codes at the step's column.

The same rule as the PyTorch path: a token whose probability is zero is never picked (the
most likely one is, where ``u`` lands past the last nonzero one by rounding). The tokens
are those of the PyTorch path up to rounding: both round in fp32 and float64, in their own
orders, so a draw whose ``u`` falls within about 1e-7 of a boundary between two tokens may
pick the neighbour (``tests/core/draw_interpret_checks.py`` checks every pick against the
float64 CDF). Every image is its own program, so a draw does not depend on the batch.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from torch import Tensor

__all__ = ["draw_tokens_triton"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: logits a program handles at once (eight warps: sixteen a thread)
BLOCK = 4096


@triton.jit
def _guided(row, uncond_row, offs, mask, scale, temperature, HAS_CFG: tl.constexpr):
    """``(uncond + scale * (cond - uncond)) / temperature`` in fp32, -inf past the row's end; the operations
    of the PyTorch path in its order, each rounded (no fused multiply-add, IEEE division)."""
    g = tl.load(row + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_CFG:
        un = tl.load(uncond_row + offs, mask=mask, other=0.0).to(tl.float32)
        g = un + scale * (g - un)
    return tl.where(mask, tl.div_rn(g, temperature), float("-inf"))


@triton.jit
def _draw_kernel(logits_ptr, u_ptr, k_ptr, codes_ptr, V, B, s_l, s_u, s_c, cfg_scale_m1, n_tok_m1, temperature,
                 HAS_CFG: tl.constexpr, LINEAR: tl.constexpr, BLOCK_V: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    k = tl.load(k_ptr)
    row = logits_ptr + b * s_l
    uncond_row = logits_ptr + (b + B) * s_l
    scale = cfg_scale_m1 + 1.0
    if LINEAR:  # 1 + (cfg_scale - 1) * k / (tokens - 1), in the PyTorch path's order
        scale = 1.0 + tl.div_rn(cfg_scale_m1 * k.to(tl.float32), n_tok_m1)
    # 1. maximum and sum of exponentials, rescaled as the maximum grows
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.full((), 0.0, tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        g = _guided(row, uncond_row, offs, offs < V, scale, temperature, HAS_CFG)
        m_new = tl.maximum(m, tl.max(g, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(g - m_new), axis=0)
        m = m_new
    # 2. the probabilities' float64 total and the most likely token (the first of equals)
    total = tl.full((), 0.0, tl.float64)
    best = tl.full((), -1.0, tl.float32)
    best_i = tl.full((), 0, tl.int64)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        p = tl.div_rn(tl.exp(_guided(row, uncond_row, offs, offs < V, scale, temperature, HAS_CFG) - m), s)
        total += tl.sum(p.to(tl.float64), axis=0)
        block_best, block_i = tl.max(p, axis=0, return_indices=True, return_indices_tie_break_left=True)
        best_i = tl.where(block_best > best, start + block_i.to(tl.int64), best_i)
        best = tl.maximum(best, block_best)
    # 3. the first token whose running sum passes u * total
    target = tl.load(u_ptr + b * s_u + k) * total
    carry = tl.full((), 0.0, tl.float64)
    pick = tl.full((), -1, tl.int64)
    pick_p = tl.full((), 0.0, tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        mask = offs < V
        p = tl.div_rn(tl.exp(_guided(row, uncond_row, offs, mask, scale, temperature, HAS_CFG) - m), s)
        p64 = p.to(tl.float64)
        passed = (carry + tl.cumsum(p64, axis=0) > target) & mask
        first = tl.min(tl.where(passed, offs, V), axis=0).to(tl.int64)
        found = (pick < 0) & (first < V)
        pick_p = tl.where(found, tl.sum(tl.where(offs == first, p, 0.0), axis=0), pick_p)
        pick = tl.where(found, first, pick)
        if start + BLOCK_V >= V:  # u past the last token by rounding: the last token, as searchsorted's clamp
            last = tl.sum(tl.where(offs == V - 1, p, 0.0), axis=0)
            pick_p = tl.where(pick < 0, last, pick_p)
            pick = tl.where(pick < 0, V - 1, pick)
        carry += tl.sum(p64, axis=0)
    tl.store(codes_ptr + b * s_c + k, tl.where(pick_p > 0, pick, best_i))


def draw_tokens_triton(logits: Tensor, u: Tensor, k: Tensor, codes: Tensor, *, cfg_scale: float, linear: bool,
                       num_tokens: int, temperature: float) -> None:
    """Draw token ``k`` of every image into ``codes`` (B, N) int64 from ``logits`` ((2B, V) with CFG: the
    conditioned rows first, else (B, V)) and the uniforms ``u`` (B, N) float64; ``k`` (1,) int64 on the device.
    ``cfg_scale`` 1 means no CFG; ``linear`` ramps the scale from 1 at the first token to ``cfg_scale`` at the last.
    ``temperature`` must be positive (0, greedy, is the PyTorch path's)."""
    batch = codes.shape[0]
    has_cfg = cfg_scale != 1.0
    if logits.shape[0] != batch * (2 if has_cfg else 1) or not temperature > 0:
        raise ValueError(f"logits {tuple(logits.shape)} for {batch} images (CFG {has_cfg}) at temperature "
                         f"{temperature}: expected {batch * (2 if has_cfg else 1)} rows and a positive temperature")
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    _draw_kernel[(batch,)](
        logits, u, k, codes, logits.shape[1], batch, logits.stride(0), u.stride(0), codes.stride(0),
        cfg_scale - 1.0, float(max(num_tokens - 1, 1)), temperature,
        HAS_CFG=has_cfg, LINEAR=has_cfg and linear and num_tokens > 1,  # one token: the constant scale, as guidance
        BLOCK_V=min(BLOCK, triton.next_power_of_2(logits.shape[1])),
        num_warps=8, **({} if INTERPRET else {"enable_fp_fusion": False}),
    )
