"""Pure-PyTorch Mamba-2 SSD ops: the CPU path and the oracle for the Triton kernels.

Shapes follow mamba-ssm's ``mamba_chunk_scan_combined`` / ``selective_state_update``:
``b`` batch, ``l`` length, ``h`` heads, ``p`` head dim, ``g`` groups (``h % g == 0``;
head ``i`` reads group ``i // (h // g)``), ``n`` state size.

The recurrence per head, with ``dt`` after bias and softplus::

    state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t B_t^T        (p, n)
    y_t     = state_t C_t + D x_t,   out_t = y_t * silu(z_t)

Everything is computed in fp32 (fp64 when ``x`` is fp64) and returned in ``x.dtype``;
autograd differentiates through every argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from avgkit_mamba.ops.state_quant import load_state, store_state_, store_state_where_

__all__ = ["check_scan_shapes", "check_step_shapes", "process_dt", "ssd_chunk_scan", "ssd_scan_naive", "ssd_step",
           "ssd_window_step"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def process_dt(dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool, dtype: torch.dtype) -> Tensor:
    """``softplus(dt + dt_bias)`` (each step optional), in ``dtype``."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    return F.softplus(dt) if dt_softplus else dt


def _check_groups(nheads: int, ngroups: int) -> None:
    if nheads % ngroups != 0:
        raise ValueError(f"nheads ({nheads}) must be a multiple of ngroups ({ngroups}); change ngroups")


def _heads_from_groups(t: Tensor, nheads: int, dim: int) -> Tensor:
    """Repeat each group ``nheads // ngroups`` times along ``dim`` (groups -> heads)."""
    ngroups = t.shape[dim]
    _check_groups(nheads, ngroups)
    return t if ngroups == nheads else t.repeat_interleave(nheads // ngroups, dim=dim)


def _skip_and_gate(y: Tensor, x: Tensor, D: Tensor | None, z: Tensor | None, ct: torch.dtype) -> Tensor:
    """``(y + D x) * silu(z)`` (each term optional) computed in ``ct``, returned in ``x.dtype``.

    ``D`` is per head: ``(h,)`` against a trailing ``(h, p)``.
    """
    if D is not None:
        y = y + D.to(ct)[:, None] * x.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(x.dtype)


def check_scan_shapes(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    """The argument check of every SSD scan implementation (torch and Triton)."""
    b, seqlen, h, _ = x.shape
    if dt.shape != (b, seqlen, h) or A.shape != (h,) or B.shape[:2] != (b, seqlen) or B.shape != C.shape:
        raise ValueError(
            f"inconsistent SSD shapes x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}, C {tuple(C.shape)}; expected (b,l,h,p), (b,l,h), (h,), (b,l,g,n) x2"
        )
    _check_groups(h, B.shape[2])


def split_zxbcdt(zxbcdt: Tensor, nheads: int, headdim: int, ngroups: int, dstate: int) -> tuple[Tensor, Tensor, Tensor]:
    """``in_proj``'s output (b, cols) -> views ``z`` (b, d_inner), ``xBC`` (b, conv_dim), ``dt`` (b, nheads).

    The one column check of every decode step (torch, Triton, dual form).
    """
    d_inner = nheads * headdim
    conv_dim = d_inner + 2 * ngroups * dstate
    if zxbcdt.shape[-1] != d_inner + conv_dim + nheads:
        raise ValueError(f"zxbcdt has {zxbcdt.shape[-1]} columns; expected {d_inner + conv_dim + nheads} "
                         "(z | x B C | dt, the in_proj output)")
    z, xBC, dt = torch.split(zxbcdt, [d_inner, conv_dim, nheads], dim=-1)
    return z, xBC, dt


def check_step_shapes(
    xBC: Tensor, conv_state: Tensor, conv_weight: Tensor, ssm_state: Tensor, headdim: int, ngroups: int
) -> None:
    """The argument check of every fused decode step implementation (torch and Triton)."""
    conv_dim = xBC.shape[1]
    nheads, p, n = ssm_state.shape[1:]
    w = conv_state.shape[-1]
    if p != headdim or conv_dim != nheads * headdim + 2 * ngroups * n or conv_weight.shape != (conv_dim, w):
        raise ValueError(
            f"inconsistent step shapes xBC {tuple(xBC.shape)}, ssm_state {tuple(ssm_state.shape)}, "
            f"conv_weight {tuple(conv_weight.shape)} for headdim {headdim}, ngroups {ngroups}"
        )
    _check_groups(nheads, ngroups)


def ssd_chunk_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 256,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    initial_states: Tensor | None = None,
    return_final_states: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked SSD scan (Mamba-2), any sequence length.

    Args: x (b,l,h,p), dt (b,l,h), A (h,), B and C (b,l,g,n), D (h,) or None,
    z (b,l,h,p) or None (output gated by ``silu(z)``), dt_bias (h,) or None,
    initial_states (b,h,p,n) or None.
    Returns y (b,l,h,p) in ``x.dtype``, and final_states (b,h,p,n) in fp32 (fp64
    for fp64 inputs) when ``return_final_states``.
    """
    check_scan_shapes(x, dt, A, B, C)
    b, seqlen, h, p = x.shape
    n = B.shape[-1]
    ct = _compute_dtype(x)
    q = max(1, min(chunk_size, seqlen))  # chunking never changes the result; no padding past the sequence
    nchunks = max(1, -(-seqlen // q))
    pad = nchunks * q - seqlen

    dtp = process_dt(dt, dt_bias, dt_softplus, ct)
    # Padding after the dt transform with dt = 0 leaves the chunk's cumulative decay
    # unchanged, so padded positions neither decay nor feed the state.
    xs, Bs, Cs = (F.pad(t.to(ct), (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
    dtp = F.pad(dtp, (0, 0, 0, pad))
    xs = xs.view(b, nchunks, q, h, p)
    dtp = dtp.view(b, nchunks, q, h)
    Bs = _heads_from_groups(Bs, h, 2).view(b, nchunks, q, h, n)
    Cs = _heads_from_groups(Cs, h, 2).view(b, nchunks, q, h, n)

    acs = torch.cumsum(dtp * A.to(ct), dim=2)  # (b, c, q, h) cumulative log-decay
    acs_h = acs.permute(0, 1, 3, 2)  # (b, c, h, q)

    # 1. within each chunk: y_t += sum_{s<=t} (C_t . B_s) exp(acs_t - acs_s) dt_s x_s
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    seg = (acs_h[..., :, None] - acs_h[..., None, :]).masked_fill(~causal, float("-inf"))
    scores = torch.einsum("bclhn,bcshn->bchls", Cs, Bs) * torch.exp(seg)
    y = torch.einsum("bchls,bcsh,bcshp->bclhp", scores, dtp, xs)

    # 2. the state each chunk adds, decayed to the chunk's end
    decay_to_end = torch.exp(acs[:, :, -1:, :] - acs) * dtp  # (b, c, q, h)
    chunk_states = torch.einsum("bcshn,bcsh,bcshp->bchpn", Bs, decay_to_end, xs)

    # 3. pass states across chunks (sequential over chunks only)
    state = (
        torch.zeros(b, h, p, n, dtype=ct, device=x.device)
        if initial_states is None
        else initial_states.to(ct)
    )
    chunk_decay = torch.exp(acs[:, :, -1, :])  # (b, c, h)
    entering = []
    for c in range(nchunks):
        entering.append(state)
        state = chunk_decay[:, c, :, None, None] * state + chunk_states[:, c]
    entering_states = torch.stack(entering, dim=1)  # (b, c, h, p, n)

    # 4. contribution of the state entering each chunk
    y = y + torch.einsum("bclhn,bchpn,bclh->bclhp", Cs, entering_states, torch.exp(acs))

    y = y.reshape(b, nchunks * q, h, p)[:, :seqlen]
    y = _skip_and_gate(y, x, D, z, ct)
    return (y, state) if return_final_states else y


def ssd_scan_naive(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    initial_states: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence (slow, obviously correct): returns (y, final_states)."""
    check_scan_shapes(x, dt, A, B, C)
    b, seqlen, h, p = x.shape
    n = B.shape[-1]
    ct = _compute_dtype(x)
    dtp = process_dt(dt, dt_bias, dt_softplus, ct)
    Bh = _heads_from_groups(B.to(ct), h, 2)
    Ch = _heads_from_groups(C.to(ct), h, 2)
    state = torch.zeros(b, h, p, n, dtype=ct, device=x.device) if initial_states is None else initial_states.to(ct)
    ys = []
    for t in range(seqlen):
        decay = torch.exp(dtp[:, t] * A.to(ct))[:, :, None, None]
        state = decay * state + (dtp[:, t, :, None] * x[:, t].to(ct))[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p, dtype=ct)
    return _skip_and_gate(y, x, D, z, ct), state


def ssd_step(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    state_scale: Tensor | None = None,
) -> Tensor:
    """One-token SSM update, ``state`` (b,h,p,n) modified in place.

    Args: x (b,h,p), dt (b,h), A (h,), B and C (b,g,n), D (h,), z (b,h,p), dt_bias (h,);
    ``state_scale`` (b,h,p) fp32 for an int8 state (:mod:`avgkit_mamba.ops.state_quant`).
    Returns y (b,h,p) in ``x.dtype``. The update is computed in fp32 and rounded once
    into the state's dtype (quantised per row for int8); y reads the unrounded new state.
    """
    h = x.shape[1]
    ct = _compute_dtype(x) if state.dtype != torch.float64 else torch.float64
    dtp = process_dt(dt, dt_bias, dt_softplus, ct)  # (b, h)
    Bh = _heads_from_groups(B.to(ct), h, 1)
    Ch = _heads_from_groups(C.to(ct), h, 1)
    xf = x.to(ct)
    decay = torch.exp(dtp * A.to(ct))[:, :, None, None]
    new_state = decay * load_state(state, state_scale, ct) + (dtp[:, :, None] * xf)[..., None] * Bh[:, :, None, :]
    store_state_(state, state_scale, new_state)
    y = torch.einsum("bhpn,bhn->bhp", new_state, Ch)
    return _skip_and_gate(y, x, D, z, ct)


def _append_and_weigh(cache_x: Tensor, cache_b: Tensor, cache_dt: Tensor, cache_cum: Tensor, row: Tensor,
                      before: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, dt_bias: Tensor | None,
                      ct: torch.dtype) -> tuple[Tensor, Tensor]:
    """Append one token at ``row`` ((1,) int64) of the per-token caches, in place, and weigh the cached rows.

    ``before`` (b,h) is the running sum of dt*A up to the previous row. Returns the token's
    running sum ``cum`` (b,h) and ``w = exp(cum - cum_s) dt_s`` (b,L,h) for the rows ``s <= row``,
    0 after it: the dual form's weights, by which each cached token reaches this one.
    """
    dtp = process_dt(dt, dt_bias, True, ct)  # (b, h)
    cum = before + dtp * A.to(ct)
    cache_x.index_copy_(1, row, x[:, None].to(cache_x.dtype))
    cache_b.index_copy_(1, row, B[:, None].to(cache_b.dtype))
    cache_dt.index_copy_(1, row, dtp[:, None])
    cache_cum.index_copy_(1, row, cum[:, None])
    upto = torch.arange(cache_x.shape[1], device=x.device) <= row  # (L,)
    w = torch.where(upto[None, :, None], torch.exp((cum[:, None, :] - cache_cum).clamp(max=0.0)) * cache_dt, 0.0)
    return cum, w


def ssd_window_step(
    state: Tensor,
    state_scale: Tensor | None,
    cache_x: Tensor,
    cache_b: Tensor,
    cache_dt: Tensor,
    cache_cum: Tensor,
    j: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
) -> Tensor:
    """One token through the chunked form: a state read every step and written once a window.

    ``state`` (b,h,p,n) holds every token before the window (int8 with ``state_scale``
    (b,h,p) for the one-byte state); the window caches (``cache_x`` (b,K,h,p),
    ``cache_b`` (b,K,g,n), ``cache_dt`` and ``cache_cum`` (b,K,h) fp32, the running sum of
    dt*A from the window's start) hold its tokens ``s < j``; ``j`` (1,) int64 is this
    token's row. Token ``j`` is appended, then
    ``y = exp(cum_j) (H C) + sum_{s<=j} (C . B_s) exp(cum_j - cum_s) dt_s x_s`` plus ``D x``,
    gated by ``silu(z)``. At the window's last row (``j = K-1``) the state absorbs the
    window, ``H <- exp(cum_j) H + sum_s exp(cum_j - cum_s) dt_s x_s B_s^T``, and the next
    token starts a new one. Equal to :func:`ssd_step` in exact arithmetic; no host sync.
    Args as :func:`ssd_step`; returns y (b,h,p).
    """
    h = x.shape[1]
    window = cache_x.shape[1]
    ct = torch.float32
    before = cache_cum.index_select(1, (j - 1).clamp(min=0))[:, 0] * (j > 0)  # 0 at the window's start
    cum_j, w = _append_and_weigh(cache_x, cache_b, cache_dt, cache_cum, j, before, x, dt, A, B, dt_bias, ct)
    Bh = _heads_from_groups(cache_b.to(ct), h, 2)  # (b, K, h, n)
    Ch = _heads_from_groups(C.to(ct), h, 1)  # (b, h, n)
    xs = cache_x.to(ct)
    scores = torch.einsum("bshn,bhn->bsh", Bh, Ch)
    H = load_state(state, state_scale, ct)
    carry = torch.exp(cum_j)  # (b, h): the decay since the window's start
    y = carry[..., None] * torch.einsum("bhpn,bhn->bhp", H, Ch) + torch.einsum("bsh,bshp->bhp", w * scores, xs)
    folded = carry[..., None, None] * H + torch.einsum("bsh,bshp,bshn->bhpn", w, xs, Bh)
    store_state_where_(state, state_scale, folded, j == window - 1)
    return _skip_and_gate(y, x, D, z, ct)


def ssd_dual_step(
    cache_x: Tensor,
    cache_b: Tensor,
    cache_dt: Tensor,
    cache_cum: Tensor,
    t: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
) -> Tensor:
    """One token through the dual (quadratic) form, from per-token caches instead of a state.

    The caches hold every earlier token ``s < t``: ``cache_x`` (b,L,h,p), ``cache_b``
    (b,L,g,n), ``cache_dt`` (b,L,h) = softplus(dt + dt_bias) and ``cache_cum`` (b,L,h) =
    the running sum of dt*A (fp32). Token ``t`` (a (1,) int64 tensor, ``t >= 1``) is
    appended in place, then ``y_t = sum_{s<=t} (C_t . B_s) exp(cum_t - cum_s) dt_s x_s``,
    plus ``D x_t``, gated by ``silu(z)``; equal to :func:`ssd_step` on the state the
    tokens ``0..t`` would have built. Args as :func:`ssd_step`; returns y (b,h,p).
    """
    h = x.shape[1]
    ct = torch.float32
    before = cache_cum.index_select(1, t - 1)[:, 0]
    _, w = _append_and_weigh(cache_x, cache_b, cache_dt, cache_cum, t, before, x, dt, A, B, dt_bias, ct)
    scores = _heads_from_groups(torch.einsum("bsgn,bgn->bsg", cache_b.to(ct), C.to(ct)), h, 2)  # (b, L, h)
    y = torch.einsum("bsh,bshp->bhp", w * scores, cache_x.to(ct))
    return _skip_and_gate(y, x, D, z, ct)
