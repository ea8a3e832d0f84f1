"""Triton jit helpers shared by the Mamba-2 kernels (scan, decode step, dual step).

Each helper has its PyTorch reference named in its docstring; the kernels that use them
are checked against those references under the interpreter (``tests/mamba_interpret_checks.py``).

* ``_softplus``: ``torch.nn.functional.softplus`` (threshold 20).
* ``_dt_log_decay``: a step's dt (bias, softplus) and ``dt * A``, as
  :func:`avgkit_mamba.ops.ssd_torch.ssd_step` computes them.
* ``_conv_window`` / ``_conv_out`` / ``_conv_shift`` / ``_conv_x`` / ``_conv_x_from_old`` / ``_conv_bc`` /
  ``_conv_inputs`` / ``_shift_windows`` / ``_store_window``: one token of the causal depthwise conv,
  :func:`avgkit_mamba.ops.conv_torch.conv_step` (window shift, + bias, SiLU).
* ``_dequantize_rows`` / ``_quantize_rows``: the one-byte state,
  :mod:`avgkit_mamba.ops.state_quant`; ``_quads`` / ``_unpack_byte`` / ``_pack_rounded``: the same state
  read and written as 4-byte words (``_store_words``: requantised and stored); ``_round_c16`` / ``_pack_c16`` / ``_dot_words``: its rows' dot products with
  a vector rounded to 16-bit integers, in integer arithmetic.
* ``_skip_gate_store``: a decode step's output, ``(y + D x) * silu(z)``
  (:func:`avgkit_mamba.ops.dispatch.fused_step_torch`), or with the norm deferred its
  weighted value and square (``norm_torch.DeferredNorm``).

Window order: a conv window is shifted in place, element ``w + 1`` stored at ``w``. A
program's threads load and store global memory with no order between them, and the
store's layout need not match the load's, so a barrier stands between reading the old
window and writing the shifted one (an in-place pass without one made the scan's states
differ from call to call on a GPU).
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import libdevice

from avgkit_mamba.ops.state_quant import FLUSH, INT8_LEVELS
from avgkit_mamba.ops.triton_launch import INTERPRET

#: ``state_quant.FLUSH`` and ``state_quant.INT8_LEVELS`` as the kernels' constants
_FLUSH = tl.constexpr(FLUSH)
_LEVELS = tl.constexpr(INT8_LEVELS)
#: the interpreter runs no inline PTX: helpers that use it fall back to plain integer operations
_INTERPRET = tl.constexpr(INTERPRET)


@triton.jit
def _conv_window(state_ptr, s_c, s_w, chan, chan_mask, new_ptr, W, BLOCK_W: tl.constexpr):
    """Shifted window [old[1:], new] (rows = channels) in the state's dtype."""
    offs_w = tl.arange(0, BLOCK_W)
    shifted = tl.load(state_ptr + chan[:, None] * s_c + (offs_w[None, :] + 1) * s_w,
                      mask=chan_mask[:, None] & (offs_w[None, :] + 1 < W), other=0.0)
    new = tl.load(new_ptr + chan, mask=chan_mask, other=0.0).to(shifted.dtype)
    return tl.where(offs_w[None, :] == W - 1, new[:, None], shifted)


@triton.jit
def _conv_out(window, w_ptr, bias_ptr, chan, chan_mask, W, HAS_BIAS: tl.constexpr, BLOCK_W: tl.constexpr):
    """SiLU(bias + sum_k window[:, k] * weight[:, k]) in fp32."""
    offs_w = tl.arange(0, BLOCK_W)
    wgt = tl.load(w_ptr + chan[:, None] * W + offs_w[None, :],
                  mask=chan_mask[:, None] & (offs_w[None, :] < W), other=0.0).to(tl.float32)
    acc = tl.sum(window.to(tl.float32) * wgt, axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + chan, mask=chan_mask, other=0.0).to(tl.float32)
    return acc * tl.sigmoid(acc)


@triton.jit
def _softplus(v):
    """log1p(exp(v)) without losing the small values (Goldberg's log1p), linear above 20."""
    e = tl.exp(tl.minimum(v, 20.0))
    u = 1.0 + e
    lp = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
    return tl.where(v > 20.0, v, lp)


@triton.jit
def _dt_log_decay(dt, bias_ptr, A_ptr, heads, A_IS_LOG: tl.constexpr, HAS_DT_BIAS: tl.constexpr):
    """Heads ``heads``' dt after their bias and softplus, and ``dt * A`` (``A = -exp(A_log)`` with ``A_IS_LOG``),
    the log of the state's decay: a recurrent step takes its exp, the chunked and dual forms sum it."""
    dt = dt.to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(bias_ptr + heads).to(tl.float32)
    dt = _softplus(dt)
    a = tl.load(A_ptr + heads).to(tl.float32)
    if A_IS_LOG:
        a = -tl.exp(a)
    return dt, dt * a


@triton.jit
def _int8_to_float(q):
    """int8 -> fp32, exactly, without the conversion unit: the byte offset by 128 (``^ 0x80``) becomes the low
    mantissa bits of 2^23, and one subtraction removes 2^23 + 128. A conversion instruction issues at a quarter of
    the FMA rate on Hopper: with one for every value loaded and two for every value stored, the int8 state update
    was bound by them, not by its bytes."""
    bits = q.to(tl.uint8, bitcast=True).to(tl.uint32) ^ 0x4B000080
    return bits.to(tl.float32, bitcast=True) - 8388736.0


@triton.jit
def _quads(v, BLOCK: tl.constexpr):
    """A (BLOCK,) vector as four (BLOCK // 4,) vectors of its elements ``4j``, ``4j + 1``, ``4j + 2``, ``4j + 3``:
    the columns of the bytes 0-3 of a row of int8 state words (``_unpack_byte``)."""
    even, odd = tl.split(tl.reshape(v, (BLOCK // 4, 2, 2)))
    v0, v2 = tl.split(even)
    v1, v3 = tl.split(odd)
    return v0, v1, v2, v3


@triton.jit
def _unpack_byte(wx, K: tl.constexpr):
    """Byte ``K`` of each int32 word of ``wx`` (bytes ``q ^ 0x80``, i.e. ``q + 128``) as fp32 ``q``, exactly:
    the byte as the low mantissa bits of 2^23 (one byte permutation on a GPU), then one subtraction
    (``_int8_to_float`` with the offset applied once a word, not once a byte)."""
    if _INTERPRET:
        bits = ((wx >> (8 * K)) & 0xFF) | 0x4B000000
    else:  # result bytes: wx's byte K, then bytes 1-3 of 0x4B000000 (in a register, the selector immediate)
        magic = tl.full(wx.shape, 0x4B000000, tl.int32)
        if K == 0:
            bits = tl.inline_asm_elementwise("prmt.b32 $0, $2, $1, 0x3214;", "=r,r,r", [wx, magic], tl.int32, True, 1)
        elif K == 1:
            bits = tl.inline_asm_elementwise("prmt.b32 $0, $2, $1, 0x3215;", "=r,r,r", [wx, magic], tl.int32, True, 1)
        elif K == 2:
            bits = tl.inline_asm_elementwise("prmt.b32 $0, $2, $1, 0x3216;", "=r,r,r", [wx, magic], tl.int32, True, 1)
        else:
            bits = tl.inline_asm_elementwise("prmt.b32 $0, $2, $1, 0x3217;", "=r,r,r", [wx, magic], tl.int32, True, 1)
    return bits.to(tl.float32, bitcast=True) - 8388736.0


#: The words path divides by a row's scale (times the decay, or the window's carry), taken as at least this: a row
#: whose old values are all below 127 times it (zero rows among them) keeps them at that scale, an error of at most
#: 1.3e-18 beside the byte path.
_OLD_MIN = tl.constexpr(1e-20)


@triton.jit
def _store_words(u0, u1, u2, u3, s, s_ptrs, sc_ptrs, smask, mask_p, STORE_CACHE: tl.constexpr):
    """An int8 state tile in its scaled domain (rows ``s * u``; ``u0``-``u3`` the byte columns 0-3 of its words)
    requantised by rows, ``round(u * 127 / max|u|)``, and stored as words with the new row scales; a row at most
    ``state_quant.FLUSH`` stores zeros and scale 0 (``_quantize_rows``'s rule)."""
    umax = tl.max(tl.maximum(tl.maximum(tl.abs(u0), tl.abs(u1)), tl.maximum(tl.abs(u2), tl.abs(u3))), axis=1)
    absmax = umax * s
    kept = absmax > _FLUSH
    tl.store(s_ptrs, _pack_rounded(u0, u1, u2, u3, tl.where(kept, _fast_div(_LEVELS, umax), 0.0)), mask=smask,
             cache_modifier=STORE_CACHE)
    tl.store(sc_ptrs, tl.where(kept, absmax / _LEVELS, 0.0), mask=mask_p)


@triton.jit
def _state_tile(ssm_ptr, bi, hi, s_ss_b, s_ss_h, s_ss_p, s_ss_n, offs_p, mask_p, offs_n, mask_n, N,
                WORDS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Pointers and mask of the state tile of batch row ``bi``, head ``hi``, head dims ``offs_p``: its values, or
    with ``WORDS`` an int8 state's int32 words (strides counted in words, ``triton_step.words_strides``)."""
    if WORDS:
        offs_w = tl.arange(0, BLOCK_N // 4)
        ptrs = ssm_ptr.to(tl.pointer_type(tl.int32)) + bi * s_ss_b + hi * s_ss_h + offs_p[:, None] * s_ss_p + \
            offs_w[None, :]
        mask = mask_p[:, None] & (offs_w[None, :] < N // 4)
    else:
        ptrs = ssm_ptr + bi * s_ss_b + hi * s_ss_h + offs_p[:, None] * s_ss_p + offs_n[None, :] * s_ss_n
        mask = mask_p[:, None] & mask_n[None, :]
    return ptrs, mask


#: ``_dot_words``'s 16-bit operand: values rounded to integers of at most this magnitude
_C16 = tl.constexpr(32767.0)


@triton.jit
def _round_c16(v, inv):
    """``round(v * inv)`` (half to even; at most ``_C16`` in magnitude) as int32: adding 1.5 * 2^23 rounds by the
    addition, and the sum's bits less those of 1.5 * 2^23 are the integer."""
    return (v * inv + 12582912.0).to(tl.int32, bitcast=True) - 0x4B400000


@triton.jit
def _pack_c16(c0, c1, c2, c3):
    """Four int32 vectors of 16-bit integers as ``_dot_words``'s two operands: (``c0``, ``c1``) and (``c2``,
    ``c3``) as the low and high halves of int32 words."""
    return (c0 & 0xFFFF) | (c1 << 16), (c2 & 0xFFFF) | (c3 << 16)


@triton.jit
def _dot_words(w, c_lo, c_hi):
    """``sum_k q_k c_k`` over the four int8 bytes ``q_k`` (two's complement, byte 0 first) of each int32 word of
    ``w``, with ``c_lo`` holding ``c_0``, ``c_1`` and ``c_hi`` ``c_2``, ``c_3`` as 16-bit halves (``_pack_c16``): two
    integer dot products a word on a GPU (``dp2a``), exact in int32, where unpacking the bytes to fp32 and
    multiplying took three instructions a value."""
    if _INTERPRET:
        return ((c_lo << 16) >> 16) * ((w << 24) >> 24) + (c_lo >> 16) * ((w << 16) >> 24) + \
            ((c_hi << 16) >> 16) * ((w << 8) >> 24) + (c_hi >> 16) * (w >> 24)
    return tl.inline_asm_elementwise("{ dp2a.lo.s32.s32 $0, $1, $3, 0; dp2a.hi.s32.s32 $0, $2, $3, $0; }",
                                     "=r,r,r,r", [c_lo, c_hi, w], tl.int32, True, 1)


@triton.jit
def _fast_div(a, b):
    """``a / b`` to about two ulps for ``b`` between 2^-126 and 2^126 (a reciprocal and a product on a GPU; the
    full division adds a dozen instructions of range checks to a row's tail)."""
    if _INTERPRET:
        return a / b
    return libdevice.fast_dividef(a, b)


@triton.jit
def _pack_rounded(v0, v1, v2, v3, inv):
    """``round(v_k * inv)`` (half to even; ``|v_k * inv|`` at most 127.5) as the four bytes (``v0`` lowest) of
    int32 words, in two's complement: adding 1.5 * 2^23 rounds by the addition and leaves ``round(v)`` modulo
    256 in the low byte (one fused multiply-add a value, three byte permutations a word on a GPU)."""
    t0 = (v0 * inv[:, None] + 12582912.0).to(tl.int32, bitcast=True)
    t1 = (v1 * inv[:, None] + 12582912.0).to(tl.int32, bitcast=True)
    t2 = (v2 * inv[:, None] + 12582912.0).to(tl.int32, bitcast=True)
    t3 = (v3 * inv[:, None] + 12582912.0).to(tl.int32, bitcast=True)
    if _INTERPRET:
        return (t0 & 0xFF) | ((t1 & 0xFF) << 8) | ((t2 & 0xFF) << 16) | (t3 << 24)
    return tl.inline_asm_elementwise(
        "{ .reg .b32 lo, hi; prmt.b32 lo, $1, $2, 0x0040; prmt.b32 hi, $3, $4, 0x0040; prmt.b32 $0, lo, hi, 0x5410; }",
        "=r,r,r,r,r", [t0, t1, t2, t3], tl.int32, True, 1)


@triton.jit
def _round_to_int8(v):
    """fp32 in [-127.5, 127.5) -> int8, rounded half to even, without the conversion unit: adding 1.5 * 2^23 + 128
    leaves ``round(v) + 128`` in the low byte of the sum's bits (``^ 0x80`` restores the sign)."""
    bits = (v + 12583040.0).to(tl.uint32, bitcast=True) ^ 0x80
    return bits.to(tl.uint8).to(tl.int8, bitcast=True)


@triton.jit
def _dequantize_rows(q, scale):
    """int8 rows (BLOCK_P, BLOCK_N) times their fp32 scales -> fp32 (``state_quant.dequantize_rows``); ``scale``
    may carry a factor of the caller's (the step's decay)."""
    return _int8_to_float(q) * scale[:, None]


@triton.jit
def _quantize_rows(v):
    """fp32 rows -> (int8 rows, fp32 scales) as ``state_quant.quantize_rows_``: absmax / 127 per row, values
    rounded half to even.

    Masked-out columns must hold zeros (they do: B is zero there). ``|v| * 127 / absmax`` is at most 127 plus a
    rounding error, so no clamp is needed; a row at most ``state_quant.FLUSH`` stores zeros and scale 0
    (``127 / absmax`` would overflow).
    """
    absmax = tl.max(tl.abs(v), axis=1)
    kept = absmax > _FLUSH
    inv = tl.where(kept, _LEVELS / absmax, 0.0)
    return _round_to_int8(v * inv[:, None]), tl.where(kept, absmax / _LEVELS, 0.0)


@triton.jit
def _conv_inputs(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, hi, gi, ngroups, P, N, W, d_inner,
                 offs_p, mask_p, offs_n, mask_n, HAS_CONV_BIAS: tl.constexpr, BLOCK_W: tl.constexpr):
    """This token's x (head ``hi``'s channels ``offs_p``), B and C (group ``gi``) after conv + SiLU
    (``_conv_x`` then ``_conv_bc``)."""
    x = _conv_x(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, hi, P, W, offs_p, mask_p, HAS_CONV_BIAS, BLOCK_W)
    Bv, Cv = _conv_bc(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, gi, ngroups, N, W, d_inner, offs_n, mask_n,
                      HAS_CONV_BIAS, BLOCK_W)
    return x, Bv, Cv


@triton.jit
def _conv_x(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, hi, P, W, offs_p, mask_p,
            HAS_CONV_BIAS: tl.constexpr, BLOCK_W: tl.constexpr):
    """This token's x for head ``hi``'s channels ``offs_p`` after conv + SiLU, their window shifted.

    The x channels belong to the calling program alone, so it shifts their window here (B
    and C are shared by a group's heads: a later launch shifts theirs).
    """
    return _conv_shift(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, hi * P + offs_p, mask_p, W, HAS_CONV_BIAS,
                       BLOCK_W)


@triton.jit
def _conv_shift(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, chan, chan_mask, W, HAS_CONV_BIAS: tl.constexpr,
                BLOCK_W: tl.constexpr):
    """This token's conv + SiLU for channels ``chan`` (fp32), their windows shifted in place: for a caller that
    alone reads those windows this step."""
    win = _conv_window(conv_row, s_cs_c, s_cs_w, chan, chan_mask, xbc_row, W, BLOCK_W)
    out = _conv_out(win, cw_ptr, cb_ptr, chan, chan_mask, W, HAS_CONV_BIAS, BLOCK_W)
    tl.debug_barrier()  # the old window is read before it is overwritten (module docstring)
    _store_window(conv_row, s_cs_c, s_cs_w, chan, chan_mask, win, W, BLOCK_W)
    return out


@triton.jit
def _conv_x_from_old(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, hi, P, W, offs_p, mask_p,
                     HAS_CONV_BIAS: tl.constexpr, BLOCK_W: tl.constexpr):
    """This token's x for head ``hi``'s channels ``offs_p`` after conv + SiLU, their window left as it was (the
    caller shifts it later with ``_shift_windows``)."""
    chan_x = hi * P + offs_p
    win_x = _conv_window(conv_row, s_cs_c, s_cs_w, chan_x, mask_p, xbc_row, W, BLOCK_W)
    return _conv_out(win_x, cw_ptr, cb_ptr, chan_x, mask_p, W, HAS_CONV_BIAS, BLOCK_W)


@triton.jit
def _conv_bc(conv_row, xbc_row, cw_ptr, cb_ptr, s_cs_c, s_cs_w, gi, ngroups, N, W, d_inner, offs_n, mask_n,
             HAS_CONV_BIAS: tl.constexpr, BLOCK_W: tl.constexpr):
    """Group ``gi``'s B and C after conv + SiLU, from their old windows (shared by the group's heads,
    so never shifted here)."""
    chan_b = d_inner + gi * N + offs_n
    chan_c = chan_b + ngroups * N
    Bv = _conv_out(_conv_window(conv_row, s_cs_c, s_cs_w, chan_b, mask_n, xbc_row, W, BLOCK_W),
                   cw_ptr, cb_ptr, chan_b, mask_n, W, HAS_CONV_BIAS, BLOCK_W)
    Cv = _conv_out(_conv_window(conv_row, s_cs_c, s_cs_w, chan_c, mask_n, xbc_row, W, BLOCK_W),
                   cw_ptr, cb_ptr, chan_c, mask_n, W, HAS_CONV_BIAS, BLOCK_W)
    return Bv, Cv


@triton.jit
def _store_window(conv_row, s_cs_c, s_cs_w, chan, chan_mask, win, W, BLOCK_W: tl.constexpr):
    """Write ``win`` as the conv windows of channels ``chan`` (the caller's barrier stands between its reads of the
    old windows and this)."""
    offs_w = tl.arange(0, BLOCK_W)
    tl.store(conv_row + chan[:, None] * s_cs_c + offs_w[None, :] * s_cs_w, win,
             mask=chan_mask[:, None] & (offs_w[None, :] < W))


@triton.jit
def _shift_windows(conv_row, xbc_row, s_cs_c, s_cs_w, chan, chan_mask, W, BLOCK_W: tl.constexpr):
    """Append this token to the conv windows of channels ``chan``, in place, once nothing reads their old windows."""
    win = _conv_window(conv_row, s_cs_c, s_cs_w, chan, chan_mask, xbc_row, W, BLOCK_W)
    tl.debug_barrier()  # the old window is read before it is overwritten (module docstring)
    _store_window(conv_row, s_cs_c, s_cs_w, chan, chan_mask, win, W, BLOCK_W)


@triton.jit
def _shift_bc_windows(conv_row, xbc_row, s_cs_c, s_cs_w, gi, ngroups, N, W, d_inner, offs_n, mask_n,
                      BLOCK_W: tl.constexpr):
    """Append this token's B and C to group ``gi``'s conv windows, once every head of the group has
    read the old ones."""
    chan_b = d_inner + gi * N + offs_n
    chan_c = chan_b + ngroups * N
    win_b = _conv_window(conv_row, s_cs_c, s_cs_w, chan_b, mask_n, xbc_row, W, BLOCK_W)
    win_c = _conv_window(conv_row, s_cs_c, s_cs_w, chan_c, mask_n, xbc_row, W, BLOCK_W)
    tl.debug_barrier()  # both old windows are read before either is overwritten (module docstring)
    _store_window(conv_row, s_cs_c, s_cs_w, chan_b, mask_n, win_b, W, BLOCK_W)
    _store_window(conv_row, s_cs_c, s_cs_w, chan_c, mask_n, win_c, W, BLOCK_W)


@triton.jit
def _skip_gate_store(y, x, D_ptr, z_ptr, y_ptr, nw_ptr, bi, hi, P, s_z_b, s_y_b, sq_off, offs_p, mask_p,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, DEFER_NORM: tl.constexpr, FAST_GATE: tl.constexpr):
    """Head ``hi``'s output channels ``offs_p`` of batch row ``bi``: ``y + D x``, gated by ``silu(z)``; with
    ``DEFER_NORM`` scaled by the norm's weight, its square stored ``sq_off`` elements after it (summed by the
    consumer: a sum here would cost a cross-warp reduction and its barriers). ``FAST_GATE``: the sigmoid's
    division by ``_fast_div``."""
    if HAS_D:
        y += tl.load(D_ptr + hi).to(tl.float32) * x
    if HAS_Z:
        zz = tl.load(z_ptr + bi * s_z_b + hi * P + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        if FAST_GATE:
            y = y * _fast_div(zz, 1.0 + tl.exp(-zz))
        else:
            y = y * zz * tl.sigmoid(zz)
    if DEFER_NORM:  # one store of (y * w, y^2) pairs: two stores would convert y's layout twice (two more barriers)
        yw = y * tl.load(nw_ptr + hi * P + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        pair = tl.join(yw, y * y).to(y_ptr.dtype.element_ty)
        ptrs = y_ptr + bi * s_y_b + (hi * P + offs_p)[:, None] + tl.arange(0, 2)[None, :] * sq_off
        tl.store(ptrs, pair, mask=mask_p[:, None])
    else:
        tl.store(y_ptr + bi * s_y_b + hi * P + offs_p, y.to(y_ptr.dtype.element_ty), mask=mask_p)
