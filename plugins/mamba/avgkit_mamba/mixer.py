"""The Mamba-2 mixer (token mixing of one block), weight-compatible with mamba-ssm.

Parameter names and shapes match mamba-ssm's ``Mamba2`` with its defaults (no bias in
the projections, conv bias, gated RMSNorm after gating, ``D`` per head), so the
mixer weights of official AiM checkpoints load as they are::

    in_proj.weight   (2*d_inner + 2*ngroups*d_state + nheads, d_model)   rows z | x | B | C | dt
    conv1d.weight    (conv_dim, 1, d_conv), conv1d.bias (conv_dim,)      conv over x | B | C
    dt_bias, A_log, D  (nheads,)
    norm.weight      (d_inner,)
    out_proj.weight  (d_model, d_inner)

with ``d_inner = expand * d_model``, ``nheads = d_inner / headdim`` and
``conv_dim = d_inner + 2 * ngroups * d_state``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avgkit_mamba.norm import GatedRMSNorm
from avgkit_mamba.ops import conv_torch, ssd_torch
from avgkit_mamba.ops.dispatch import (
    IMPLS,
    STEP_KERNELS,
    causal_conv,
    chunk_scan,
    decode_step,
    decode_step_projected,
    dual_step,
    mixer_core,
    mixer_core_applies,
    window_step,
    window_step_deferred,
)
from avgkit_mamba.ops.norm_torch import DeferredNorm
from avgkit_mamba.ops.state_quant import load_state, store_state_

__all__ = ["Mamba2ChunkedState", "Mamba2DualState", "Mamba2Mixer", "Mamba2State"]


@dataclass
class Mamba2State:
    """Decoding state of one mixer: the conv window and the SSM state, fixed size.

    ``conv`` (B, conv_dim, d_conv) holds the last ``d_conv`` conv inputs (oldest
    first); ``ssm`` (B, nheads, headdim, d_state). A one-byte state is int8 ``ssm`` with
    ``scale`` (B, nheads, headdim) fp32 beside it (:mod:`avgkit_mamba.ops.state_quant`).
    All are allocated once and updated in place.
    """

    conv: Tensor
    ssm: Tensor
    scale: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.conv.shape[0]

    def select(self, index: Tensor) -> Mamba2State:
        """A new state holding rows ``index``."""
        scale = None if self.scale is None else self.scale.index_select(0, index)
        return Mamba2State(self.conv.index_select(0, index), self.ssm.index_select(0, index), scale)

    def zero_(self) -> Mamba2State:
        self.conv.zero_()
        self.ssm.zero_()
        if self.scale is not None:
            self.scale.zero_()
        return self

    def ssm_values(self) -> Tensor:
        """The SSM state as values (fp32 when quantised, else as stored)."""
        return self.ssm if self.scale is None else load_state(self.ssm, self.scale)

    def store_ssm_(self, values: Tensor) -> None:
        """Write SSM state values in place (quantised per row when the state is int8)."""
        store_state_(self.ssm, self.scale, values)


@dataclass(kw_only=True)
class Mamba2ChunkedState(Mamba2State):
    """Decoding state for the chunked form: the conv window, the SSM state as it stood before the
    current window, and the window's per-token caches.

    ``x`` (B, K, nheads, headdim) and ``b`` (B, K, ngroups, d_state) in the model dtype,
    ``dt`` (B, K, nheads) = softplus(dt + dt_bias) and ``cum`` (B, K, nheads), the running
    sum of dt*A from the window's start, both fp32. A step reads the SSM state and writes
    it only at the window's last row (:func:`avgkit_mamba.ops.ssd_torch.ssd_window_step`):
    about half the state traffic of the recurrent step for a window of 16.
    """

    x: Tensor
    b: Tensor
    dt: Tensor
    cum: Tensor

    def select(self, index: Tensor) -> Mamba2ChunkedState:
        base = super().select(index)
        return Mamba2ChunkedState(base.conv, base.ssm, base.scale, x=self.x.index_select(0, index),
                                  b=self.b.index_select(0, index), dt=self.dt.index_select(0, index),
                                  cum=self.cum.index_select(0, index))

    def zero_(self) -> Mamba2ChunkedState:
        super().zero_()
        for t in (self.x, self.b, self.dt, self.cum):
            t.zero_()
        return self


@dataclass
class Mamba2DualState:
    """Decoding state for the dual (quadratic) form: the conv window and per-token caches.

    ``x`` (B, L, nheads, headdim) and ``b`` (B, L, ngroups, d_state) in the model dtype,
    ``dt`` (B, L, nheads) = softplus(dt + dt_bias) and ``cum`` (B, L, nheads) = running
    sum of dt*A, both fp32; row ``s`` holds token ``s``. A step reads rows up to its
    position instead of reading and writing a whole state (see docs/benchmarks.md for
    where that pays).
    """

    conv: Tensor
    x: Tensor
    b: Tensor
    dt: Tensor
    cum: Tensor

    @property
    def batch_size(self) -> int:
        return self.conv.shape[0]

    def select(self, index: Tensor) -> Mamba2DualState:
        return Mamba2DualState(*(t.index_select(0, index) for t in (self.conv, self.x, self.b, self.dt, self.cum)))

    def zero_(self) -> Mamba2DualState:
        for t in (self.conv, self.x, self.b, self.dt, self.cum):
            t.zero_()
        return self


class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer: in_proj -> causal conv -> SSD scan -> gated RMSNorm -> out_proj.

    ``impl`` picks the kernels ("auto", "torch" or "triton"; see
    :mod:`avgkit_mamba.ops.dispatch`) and ``step_kernel`` the Triton decode step
    ("two-launch", "one-launch", "fused-in-proj" or "auto"); both may be changed after construction.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 256,
        norm_eps: float = 1e-5,
        impl: str = "auto",
        step_kernel: str = "two-launch",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ValueError(f"expand*d_model ({d_inner}) must be a multiple of headdim ({headdim})")
        nheads = d_inner // headdim
        if nheads % ngroups:
            raise ValueError(f"nheads ({nheads}) must be a multiple of ngroups ({ngroups})")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range {A_init_range} must satisfy 0 < low <= high")
        if impl not in IMPLS:
            raise ValueError(f"unknown kernel impl {impl!r}; use one of {', '.join(IMPLS)}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.headdim, self.ngroups, self.chunk_size = headdim, ngroups, chunk_size
        self.d_inner, self.nheads = d_inner, nheads
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.impl = impl
        if step_kernel not in STEP_KERNELS:
            raise ValueError(f"unknown decode step kernel {step_kernel!r}; use one of {', '.join(STEP_KERNELS)}")
        self.step_kernel = step_kernel

        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads, bias=False, **factory)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim, padding=d_conv - 1,
            bias=True, **factory,
        )
        # dt = softplus(dt_bias) starts log-uniform in [dt_min, dt_max] (floored)
        dt = torch.exp(
            torch.rand(nheads, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_softplus_dt = dt + torch.log(-torch.expm1(-dt))
        self.dt_bias = nn.Parameter(inv_softplus_dt.to(dtype=dtype))
        A = torch.empty(nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.D = nn.Parameter(torch.ones(nheads, device=device, dtype=dtype))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # type: ignore[attr-defined]  # same marker as mamba-ssm
        self.norm = GatedRMSNorm(d_inner, eps=norm_eps, group_size=d_inner // ngroups, **factory)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False, **factory)

    # ------------------------------------------------------------------ state

    def allocate_state(
        self,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        ssm_dtype: torch.dtype = torch.float32,
    ) -> Mamba2State:
        """Zeroed decoding state: conv in ``dtype`` (default: conv weight dtype), SSM in ``ssm_dtype``.

        ``ssm_dtype=torch.int8`` gives the one-byte state, with its fp32 row scales.
        """
        device = self.conv1d.weight.device if device is None else device
        conv = torch.zeros(batch, self.conv_dim, self.d_conv, device=device, dtype=dtype or self.conv1d.weight.dtype)
        ssm = torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device, dtype=ssm_dtype)
        scale = None
        if ssm_dtype == torch.int8:
            scale = torch.zeros(batch, self.nheads, self.headdim, device=device, dtype=torch.float32)
        elif not ssm_dtype.is_floating_point:
            raise ValueError(f"SSM state dtype {ssm_dtype} is not supported; use a float dtype or torch.int8")
        return Mamba2State(conv, ssm, scale)

    def allocate_chunked_state(
        self, batch: int, window: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
        ssm_dtype: torch.dtype = torch.float32,
    ) -> Mamba2ChunkedState:
        """Zeroed chunked-form state with a window of ``window`` tokens (SSM state as :meth:`allocate_state`)."""
        base = self.allocate_state(batch, device=device, dtype=dtype, ssm_dtype=ssm_dtype)
        device, dtype = base.conv.device, base.conv.dtype
        g, n, h, p = self.ngroups, self.d_state, self.nheads, self.headdim
        return Mamba2ChunkedState(
            base.conv, base.ssm, base.scale,
            x=torch.zeros(batch, window, h, p, device=device, dtype=dtype),
            b=torch.zeros(batch, window, g, n, device=device, dtype=dtype),
            dt=torch.zeros(batch, window, h, device=device, dtype=torch.float32),
            cum=torch.zeros(batch, window, h, device=device, dtype=torch.float32),
        )

    def allocate_dual_state(
        self, batch: int, max_len: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Mamba2DualState:
        """Zeroed dual-form state for up to ``max_len`` tokens (prefix included)."""
        device = self.conv1d.weight.device if device is None else device
        dtype = dtype or self.conv1d.weight.dtype
        g, n, h, p = self.ngroups, self.d_state, self.nheads, self.headdim
        return Mamba2DualState(
            torch.zeros(batch, self.conv_dim, self.d_conv, device=device, dtype=dtype),
            torch.zeros(batch, max_len, h, p, device=device, dtype=dtype),
            torch.zeros(batch, max_len, g, n, device=device, dtype=dtype),
            torch.zeros(batch, max_len, h, device=device, dtype=torch.float32),
            torch.zeros(batch, max_len, h, device=device, dtype=torch.float32),
        )

    # ------------------------------------------------------------------ compute

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _split_xbc(self, xBC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Conv outputs -> x, B, C (last dim)."""
        return torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)

    def _A(self) -> Tensor:
        # in fp32 even for half-precision weights, or exp would overflow to -inf
        return -torch.exp(self.A_log.float())

    def forward(self, x: Tensor, state: Mamba2State | None = None, mask: Tensor | None = None) -> Tensor:
        """(B, L, d_model) -> (B, L, d_model).

        With ``state``: start from it and write the final conv and SSM states into it
        (prefill); a fresh (zero) state gives the same output as no state.

        ``mask`` (B, L) bool marks real positions; padded ones (False, all before the real
        ones of their row, over a zero state) have their conv inputs and conv outputs
        zeroed, so they enter neither the conv window nor the SSM state: the real
        positions' outputs are those of the sequence without the padding.
        """
        b, seqlen, _ = x.shape
        zxbcdt = self.in_proj(x)
        if state is None and mask is None and mixer_core_applies(zxbcdt, self.d_conv, self.chunk_size, self.impl):
            return self.out_proj(mixer_core(
                zxbcdt, self.conv1d.weight.squeeze(1), self.conv1d.bias, self._A(), self.D, self.dt_bias,
                self.norm.weight, self.norm.eps, self.headdim, self.ngroups, self.d_state, self.chunk_size,
            ))
        z, xBC, dt = self._split(zxbcdt)
        keep = None if mask is None else mask[..., None].to(xBC.dtype)
        if keep is not None:
            xBC = xBC * keep
        weight = self.conv1d.weight.squeeze(1)
        if state is None:  # (B, L, conv_dim) in and out: head dims contiguous for the scan
            xBC = causal_conv(xBC, weight, self.conv1d.bias, impl=self.impl)
        else:
            xBC, conv_final = conv_torch.causal_conv1d(
                xBC.transpose(1, 2), weight, self.conv1d.bias, initial_state=state.conv, return_final_state=True
            )
            state.conv.copy_(conv_final)
            xBC = xBC.transpose(1, 2).contiguous()
        if keep is not None:
            xBC = xBC * keep  # padded positions add dt * B * x = 0 to the SSM state
        xs, Bs, Cs = self._split_xbc(xBC)
        if isinstance(state, Mamba2DualState):
            self._fill_dual(state, xs, Bs, dt)
            state = None  # the output itself needs no SSM state
        result = chunk_scan(
            xs.unflatten(-1, (self.nheads, self.headdim)),
            dt,
            self._A(),
            Bs.unflatten(-1, (self.ngroups, self.d_state)),
            Cs.unflatten(-1, (self.ngroups, self.d_state)),
            chunk_size=self.chunk_size,
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            initial_states=None if state is None else state.ssm_values(),
            return_final_states=state is not None,
            impl=self.impl,
        )
        if state is not None:
            y, ssm_final = result
            state.store_ssm_(ssm_final)
        else:
            y = result
        y = self.norm(y.reshape(b, seqlen, self.d_inner), z)
        return self.out_proj(y)

    def _fill_dual(self, state: Mamba2DualState, xs: Tensor, Bs: Tensor, dt: Tensor) -> None:
        """Prefill of the dual caches: rows ``0..L-1`` from the prefix's conv outputs."""
        b, seqlen = xs.shape[:2]
        dtp = ssd_torch.process_dt(dt, self.dt_bias, True, torch.float32)
        state.x[:, :seqlen] = xs.reshape(b, seqlen, self.nheads, self.headdim)
        state.b[:, :seqlen] = Bs.reshape(b, seqlen, self.ngroups, self.d_state)
        state.dt[:, :seqlen] = dtp
        state.cum[:, :seqlen] = torch.cumsum(dtp * self._A(), dim=1)

    def step(self, x: Tensor, state: Mamba2State | Mamba2DualState, length: Tensor | None = None) -> Tensor:
        """One token: (B, d_model) -> (B, d_model), ``state`` advanced in place.

        A :class:`Mamba2DualState` also needs ``length``, the (1,) int64 number of tokens
        already in its caches (this token's row); a :class:`Mamba2ChunkedState` the number
        of tokens decoded since prefill.
        """
        zxbcdt = self.in_proj(x)
        if isinstance(state, Mamba2ChunkedState):
            if length is None:
                raise ValueError("a chunked-form step needs length, the number of tokens decoded since prefill")
            return self._window_step(zxbcdt, state, length, deferred=False)[0]
        if isinstance(state, Mamba2DualState):
            if length is None:
                raise ValueError("a dual-form step needs length, the number of tokens already cached")
            return self.out_proj(self._dual_step(zxbcdt, state, length))
        # one decode_step: both paths gate by z and apply the mixer's grouped norm
        return self.out_proj(decode_step(*self._decode_args(zxbcdt, state), impl=self.impl, state_scale=state.scale,
                                         kernel=self.step_kernel))

    def step_deferred(self, x: Tensor, state: Mamba2State | Mamba2DualState, length: Tensor | None = None
                      ) -> tuple[Tensor, DeferredNorm | None]:
        """:meth:`step` for a caller that applies the norm's per-row factor to the output (the backbone's next
        block boundary): ``(out, None)`` as :meth:`step`, or, where the decode kernel defers the norm
        (:func:`~avgkit_mamba.ops.dispatch.decode_step_deferred`), ``out_proj`` of the unnormed output and its
        :class:`~avgkit_mamba.ops.norm_torch.DeferredNorm` (exact: with one norm group the factor is one scalar a
        row, and ``out_proj`` is linear)."""
        if isinstance(state, Mamba2ChunkedState) and length is not None:
            return self._window_step(self.in_proj(x), state, length, deferred=True)
        if type(state) is not Mamba2State:  # the dual form applies its norm
            return self.step(x, state, length), None
        x, *args = self._decode_args(x, state)
        y, y_norm = decode_step_projected(x, self.in_proj.weight, *args, impl=self.impl, state_scale=state.scale,
                                          kernel=self.step_kernel)
        return self.out_proj(y), y_norm

    def _decode_args(self, zxbcdt: Tensor, state: Mamba2State) -> tuple:
        """The recurrent decode step's positional arguments (:func:`~avgkit_mamba.ops.dispatch.decode_step`; with
        ``in_proj``'s input first, :func:`~avgkit_mamba.ops.dispatch.decode_step_projected`'s after the weight)."""
        return (zxbcdt, state.conv, self.conv1d.weight.squeeze(1), self.conv1d.bias, state.ssm, self.A_log, self.D,
                self.dt_bias, self.norm.weight, self.norm.eps, self.headdim, self.ngroups)

    def _window_step(self, zxbcdt: Tensor, state: Mamba2ChunkedState, length: Tensor, *, deferred: bool
                     ) -> tuple[Tensor, DeferredNorm | None]:
        args = (zxbcdt, state.conv, self.conv1d.weight.squeeze(1), self.conv1d.bias, state.ssm, state.scale, state.x,
                state.b, state.dt, state.cum, length, self.A_log, self.D, self.dt_bias, self.norm.weight,
                self.norm.eps, self.ngroups)
        if deferred:
            y, y_norm = window_step_deferred(*args, impl=self.impl)
            return self.out_proj(y), y_norm
        return self.out_proj(window_step(*args, impl=self.impl)), None

    def _dual_step(self, zxbcdt: Tensor, state: Mamba2DualState, length: Tensor) -> Tensor:
        return dual_step(
            zxbcdt, state.conv, self.conv1d.weight.squeeze(1), self.conv1d.bias, state.x, state.b, state.dt,
            state.cum, length, self.A_log, self.D, self.dt_bias, self.norm.weight, self.norm.eps, self.ngroups,
            impl=self.impl,
        )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
            f"headdim={self.headdim}, ngroups={self.ngroups}, chunk_size={self.chunk_size}, impl={self.impl!r}"
        )
