"""Triton kernel for a decode step's ``in_proj`` with the causal conv of this token in its epilogue.

A decoding step's ``in_proj`` (``x @ W.T``, a few rows against 768 x 3352 weights for AiM-B) is
followed by the conv's own launch (``triton_step.launch_preconv``): conv + SiLU of x, B and C,
every window shifted, and each head's dt and decay. Here one launch does both, one program per
(column block, row block):

* before its K loop (``ProjTile.hoist``) a program reads what its epilogue needs beside the
  product (the old taps of its columns' conv windows, the conv's weight and bias, dt's bias and
  A), so their latency hides behind the weights' stream, and sums the old taps' part of the conv;
* after it, the product is stored in the model's dtype (as ``in_proj``'s output: ``z`` is a view
  of it) and read back by column: conv columns add the new tap, apply SiLU and store the output
  (fp32) and the shifted window, ``dt`` columns store dt after bias and softplus and the decay
  ``exp(dt * A)``.

The output layout is the conv launch's (``xc``: channels, then dt, then decay, fp32), so the state
update (``triton_step``, ``StepTile.preconv``) reads it unchanged.
Reference: ``F.linear`` then ``launch_preconv`` (``tests/mamba_interpret_checks.py inproj``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from avgkit_mamba.ops.triton_common import _softplus
from avgkit_mamba.ops.triton_launch import INTERPRET

__all__ = ["ProjTile", "in_proj_conv_triton", "proj_tile"]


@triton.jit
def _old_taps(win, cw_ptr, cb_ptr, offs_j, ch_j, w_j, valid_j, ch, is_conv, mask_m, W: tl.constexpr,
              HAS_CONV_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The conv of the windows' old taps 1..W-1 (+ bias) for channels ``ch``, fp32 (BLOCK_M, BLOCK_N), and the
    new tap's weight (BLOCK_N,). The windows of a block of channels are one contiguous run of BLOCK_N * W values a
    row (``win + offs_j``), read in one coalesced load and summed by tap after a reshape."""
    taps = tl.load(win + offs_j[None, :], mask=mask_m[:, None] & (valid_j & (w_j > 0))[None, :], other=0.0)
    # tap w multiplies weight w - 1: the window shifted by one before the new tap comes in
    wgt = tl.load(cw_ptr + ch_j * W + w_j - 1, mask=valid_j & (w_j > 0), other=0.0).to(tl.float32)
    prod = tl.reshape(taps.to(tl.float32) * wgt[None, :], (BLOCK_M, BLOCK_N, W))
    old = tl.sum(prod, axis=2)
    if HAS_CONV_BIAS:
        old += tl.load(cb_ptr + ch, mask=is_conv, other=0.0).to(tl.float32)[None, :]
    return old, tl.load(cw_ptr + ch * W + (W - 1), mask=is_conv, other=0.0).to(tl.float32)


@triton.jit
def _in_proj_conv_kernel(
    x_ptr, w_ptr, out_ptr, conv_ptr, cw_ptr, cb_ptr, xc_ptr, bias_ptr, A_ptr,
    M, N, K, d_inner, channels, nheads,
    s_xm, s_wn, s_om, s_cs_b, s_xc,
    W: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, HAS_DT_BIAS: tl.constexpr, A_IS_LOG: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
    HOIST: tl.constexpr,
):
    """One (column block, row block). Addresses stay affine in ``tl.arange`` (no ``tl.where`` on an index), so the
    compiler sees which axis is contiguous and coalesces each access along it: with an index from a ``tl.where``
    it spread a warp over 32 rows of one channel, 32 sectors a request (Nsight Compute: half the sectors
    excessive, the epilogue 10 us)."""
    n0 = tl.program_id(0) * BLOCK_N
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    ch = offs_n - d_inner  # conv channel of each column (out of range outside x, B, C: masked)
    is_conv = (ch >= 0) & (ch < channels)
    head = ch - channels  # dt's head of each column
    is_dt = (head >= 0) & (offs_n < N)
    # the block's conv windows as one run: value j is channel c0 + j // W, tap j % W
    offs_j = tl.arange(0, BLOCK_N * W)
    ch_j = n0 - d_inner + offs_j // W
    w_j = offs_j % W
    valid_j = (ch_j >= 0) & (ch_j < channels)
    win = conv_ptr + offs_m[:, None].to(tl.int64) * s_cs_b + (n0 - d_inner) * W
    if HOIST:  # the old taps' loads before the K loop, where the weights' stream hides them
        old, w_new = _old_taps(win, cw_ptr, cb_ptr, offs_j, ch_j, w_j, valid_j, ch, is_conv, mask_m, W,
                               HAS_CONV_BIAS, BLOCK_M, BLOCK_N)
    dt_bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if HAS_DT_BIAS:
        dt_bias = tl.load(bias_ptr + head, mask=is_dt, other=0.0).to(tl.float32)
    a = tl.load(A_ptr + head, mask=is_dt, other=0.0).to(tl.float32)
    if A_IS_LOG:
        a = -tl.exp(a)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        offs_k = k + tl.arange(0, BLOCK_K)
        xa = tl.load(x_ptr + offs_m[:, None] * s_xm + offs_k[None, :], mask=mask_m[:, None] & (offs_k[None, :] < K),
                     other=0.0)
        b = tl.load(w_ptr + offs_n[:, None] * s_wn + offs_k[None, :],
                    mask=(offs_n[:, None] < N) & (offs_k[None, :] < K), other=0.0)
        acc = tl.dot(xa, tl.trans(b), acc)
    # in_proj's output stored as the two-launch path stores it, then read back by the epilogue below: in the
    # product's own (MMA) layout the epilogue's pointers and masks held over 200 registers a thread and spilled
    out = out_ptr + offs_m[:, None] * s_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & (offs_n[None, :] < N))
    tl.debug_barrier()  # the stores above before the loads below (each element is this program's)
    new = tl.load(out, mask=mask_m[:, None] & (is_conv | is_dt)[None, :], other=0.0)

    if not HOIST:
        old, w_new = _old_taps(win, cw_ptr, cb_ptr, offs_j, ch_j, w_j, valid_j, ch, is_conv, mask_m, W,
                               HAS_CONV_BIAS, BLOCK_M, BLOCK_N)
    pre = old + new.to(tl.float32) * w_new[None, :]
    xc_row = xc_ptr + offs_m[:, None].to(tl.int64) * s_xc
    conv_mask = mask_m[:, None] & is_conv[None, :]
    tl.store(xc_row + ch[None, :], pre * tl.sigmoid(pre), mask=conv_mask)
    # the shifted window, [old[1:], new], stored as one run: each (row, channel) is this program's alone, and the
    # barrier keeps the store after every load of the old window whatever layouts the compiler gives them
    run_mask = mask_m[:, None] & valid_j[None, :]
    shifted = tl.load(win + offs_j[None, :] + 1, mask=run_mask & (w_j < W - 1)[None, :], other=0.0)
    fresh = tl.reshape(tl.broadcast_to(new.to(conv_ptr.dtype.element_ty)[:, :, None], (BLOCK_M, BLOCK_N, W)),
                       (BLOCK_M, BLOCK_N * W))
    tl.debug_barrier()
    tl.store(win + offs_j[None, :], tl.where((w_j == W - 1)[None, :], fresh, shifted), mask=run_mask)
    dt = _softplus(new.to(tl.float32) + dt_bias[None, :])  # as triton_common._dt_log_decay
    dt_mask = mask_m[:, None] & is_dt[None, :]
    tl.store(xc_row + channels + head[None, :], dt, mask=dt_mask)
    tl.store(xc_row + channels + nheads + head[None, :], tl.exp(dt * a[None, :]), mask=dt_mask)


class ProjTile(NamedTuple):
    """The fused ``in_proj``'s tiling: rows and columns a program, the K step, its pipeline depth, warps, and whether
    the conv's old taps are read before the K loop (``hoist``) or after it."""

    block_m: int
    block_n: int
    block_k: int
    stages: int
    num_warps: int
    hoist: bool = True

    @classmethod
    def parse(cls, spec: str) -> ProjTile:
        """``32x16x128x4x4``: BLOCK_M x BLOCK_N x BLOCK_K x STAGES x WARPS (BLOCK_M 0: the rows' power of two), with
        ``:late`` the old taps read after the K loop."""
        head, *flags = spec.strip().split(":")
        try:
            if flags not in ([], ["late"]):
                raise ValueError
            return cls(*(int(v) for v in head.split("x")), hoist=not flags)
        except (TypeError, ValueError):
            raise ValueError(f"cannot read {spec!r}; write BLOCK_MxBLOCK_NxBLOCK_KxSTAGESxWARPS[:late], e.g. "
                             "32x16x128x4x4") from None


def proj_tile(rows: int) -> ProjTile:
    """The tiling for ``rows`` rows: the best plain Triton tilings of ``in_proj`` measured on an H100
    (``benchmarks/results/decode_linear_h100.json``): all rows, 16 columns, K steps of 128 at 32 rows or fewer;
    64 x 32 above. Small tiles under the interpreter."""
    if INTERPRET:
        return ProjTile(16, 16, 16, 1, 4)
    if rows <= 32:
        return ProjTile(max(16, triton.next_power_of_2(rows)), 16, 128, 4, 4)
    return ProjTile(64, 32, 128, 3, 4)


def in_proj_conv_triton(x: Tensor, weight: Tensor, conv_state: Tensor, conv_weight: Tensor, conv_bias: Tensor | None,
                        dt_bias: Tensor | None, A: Tensor, a_is_log: bool, d_inner: int,
                        tile: ProjTile | None = None) -> tuple[Tensor, Tensor]:
    """``x`` (b, d_model) through ``in_proj`` (``weight`` (d_inner + channels + nheads, d_model)) and this
    token's conv in one launch: returns ``z`` (b, d_inner) in ``x``'s dtype (a view of the whole product) and ``xc`` (b, channels + 2 * nheads)
    fp32, the conv launch's layout (conv + SiLU of x, B and C, then each head's dt and decay); ``conv_state``
    (b, channels, w) is shifted in place. ``A`` is ``A_log`` with ``a_is_log``."""
    b, k = x.shape
    n = weight.shape[0]
    channels, w = conv_state.shape[1:]
    nheads = n - d_inner - channels
    if nheads <= 0 or weight.shape[1] != k or conv_weight.shape != (channels, w) or A.shape != (nheads,):
        raise ValueError(f"in_proj weight {tuple(weight.shape)}, conv state {tuple(conv_state.shape)}, conv weight "
                         f"{tuple(conv_weight.shape)} and A {tuple(A.shape)} do not fit d_inner {d_inner}")
    if conv_state.stride(2) != 1 or conv_state.stride(1) != w:
        raise ValueError(f"the conv state {tuple(conv_state.shape)} must be contiguous in its channels and taps "
                         f"(strides {conv_state.stride()}): the kernel reads a block's windows as one run")
    x, weight, conv_weight = x.contiguous(), weight.contiguous(), conv_weight.contiguous()
    tile = tile or proj_tile(b)
    bm = tile.block_m or max(16, triton.next_power_of_2(b))
    out = torch.empty(b, n, device=x.device, dtype=x.dtype)
    xc = torch.empty(b, channels + 2 * nheads, device=x.device, dtype=torch.float32)
    _in_proj_conv_kernel[(triton.cdiv(n, tile.block_n), triton.cdiv(b, bm))](
        x, weight, out, conv_state, conv_weight, conv_bias if conv_bias is not None else conv_weight, xc,
        dt_bias if dt_bias is not None else A, A,
        b, n, k, d_inner, channels, nheads,
        x.stride(0), weight.stride(0), out.stride(0), conv_state.stride(0), xc.stride(0),
        W=w, HAS_CONV_BIAS=conv_bias is not None, HAS_DT_BIAS=dt_bias is not None, A_IS_LOG=a_is_log,
        BLOCK_M=bm, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k, STAGES=tile.stages, HOIST=tile.hoist,
        num_warps=tile.num_warps,
    )
    return out[:, :d_inner], xc
