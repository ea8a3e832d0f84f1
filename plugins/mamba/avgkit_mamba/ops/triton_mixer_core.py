"""A mixer's whole-sequence core, between ``in_proj`` and ``out_proj``, as one autograd op on Triton kernels.

Forward: the causal conv (+ SiLU) of ``in_proj``'s xBC columns (:mod:`triton_conv`), the
chunked scan over its x, B and C columns with dt read in place (:mod:`triton_ssd`), then
the gated RMSNorm with the z columns (:mod:`triton_gated_norm`). Backward: ``in_proj``'s
output gradient is one buffer that each kernel writes its own columns of (dz from the
norm's backward, ddt from the scan's, the conv's input gradient), and the scan's x, B and
C gradients land in one packed buffer that the conv's backward reads.

Why one op: built from the three ops, torch.compile concatenated the scan's three
gradients for the conv, concatenated dz, the conv's gradient and ddt into ``in_proj``'s
output gradient, copied the conv's output into the scan's inputs, and ran the gated
norm as separate forward, recomputed-forward and backward passes; on an H100 those
passes were 12 of the 67 ms of GPU time in AiM-B's training step (``benchmarks/results/
train_step_profile_aim_b_aligned_h100.txt``; the one op measured 1.13x the three ops,
docs/benchmarks.md). Saved for the backward: ``in_proj``'s
output, the conv's output, the scan's output and the norm's per-row scale, the tensors
the three ops kept between them.

Same results as ``causal_conv`` + ``chunk_scan`` + ``gated_rms_norm`` (checked under the
interpreter, ``tests/mamba_interpret_checks.py``, group ``core``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from avgkit_mamba.ops import triton_conv, triton_ssd
from avgkit_mamba.ops.ssd_torch import split_zxbcdt
from avgkit_mamba.ops.triton_gated_norm import gated_norm_bwd, gated_norm_fwd

__all__ = ["mixer_core_triton"]


def _unit_last(t: Tensor) -> Tensor:
    """(b, l, c) ``t`` as it is when its channels are contiguous and its rows evenly spaced (any row stride), else
    a contiguous copy."""
    return t if t.stride(-1) == 1 and t.stride(0) == t.shape[1] * t.stride(1) else t.contiguous()


def _xbc(t: Tensor, nheads: int, ngroups: int, dstate: int) -> tuple[Tensor, Tensor, Tensor]:
    """x (b, l, h, p), B and C (b, l, g, n) views of a conv-output-shaped tensor."""
    d_inner = t.shape[-1] - 2 * ngroups * dstate
    x, B, C = t.split([d_inner, ngroups * dstate, ngroups * dstate], dim=-1)
    return x.unflatten(-1, (nheads, -1)), B.unflatten(-1, (ngroups, dstate)), C.unflatten(-1, (ngroups, dstate))


def _fwd(zxbcdt: Tensor, conv_weight: Tensor, conv_bias: Tensor | None, A: Tensor, D: Tensor | None,
         dt_bias: Tensor | None, norm_weight: Tensor, eps: float, headdim: int, ngroups: int, dstate: int,
         chunk_size: int) -> tuple[Tensor, ...]:
    zxbcdt, conv_weight = _unit_last(zxbcdt), conv_weight.contiguous()
    b, seqlen, _ = zxbcdt.shape
    d_inner = norm_weight.shape[0]
    nheads = d_inner // headdim
    z, xbc_in, dt = split_zxbcdt(zxbcdt, nheads, headdim, ngroups, dstate)
    xBC = triton_conv._fwd(xbc_in, conv_weight, conv_bias, True)
    x, B, C = _xbc(xBC, nheads, ngroups, dstate)
    y, _, dtp, acs, _ = triton_ssd._fwd(x, dt, A, B, C, chunk_size, D, None, dt_bias, True, None, False)
    y = y.view(b * seqlen, d_inner)
    out, rstd = gated_norm_fwd(y, z.flatten(0, 1), norm_weight, eps, d_inner // ngroups)
    return out.view(b, seqlen, d_inner), xBC, y, rstd, dtp, acs


def _bwd(dout: Tensor, zxbcdt: Tensor, xBC: Tensor, y: Tensor, rstd: Tensor, dtp: Tensor, acs: Tensor,
         conv_weight: Tensor, conv_bias: Tensor | None, A: Tensor, D: Tensor | None, dt_bias: Tensor | None,
         norm_weight: Tensor, headdim: int, ngroups: int, dstate: int, chunk_size: int) -> tuple[Tensor, ...]:
    zxbcdt, conv_weight = _unit_last(zxbcdt), conv_weight.contiguous()
    xBC, y, rstd, dtp, acs = (t.contiguous() for t in (xBC, y, rstd, dtp, acs))
    b, seqlen, _ = zxbcdt.shape
    d_inner = norm_weight.shape[0]
    nheads = d_inner // headdim
    dzxbcdt = torch.empty(zxbcdt.shape, device=zxbcdt.device, dtype=zxbcdt.dtype)
    z, xbc_in, dt = split_zxbcdt(zxbcdt, nheads, headdim, ngroups, dstate)
    dz, dxbc_in, ddt = split_zxbcdt(dzxbcdt, nheads, headdim, ngroups, dstate)  # each kernel writes its columns

    dy = torch.empty_like(y)
    dnorm = gated_norm_bwd(dout.reshape(b * seqlen, d_inner).contiguous(), y, z.flatten(0, 1), norm_weight, rstd,
                           d_inner // ngroups, dy, dz.flatten(0, 1))

    dxBC = torch.empty_like(xBC)
    x, B, C = _xbc(xBC, nheads, ngroups, dstate)
    dx, dB, dC = _xbc(dxBC, nheads, ngroups, dstate)
    _, _, dA, _, _, dD, _, dbias, _ = triton_ssd._bwd(
        dy.view(b, seqlen, nheads, headdim), None, x, dt, A, B, C, chunk_size, D, None, None, dt_bias, True, None,
        dtp, acs, out=(dx, ddt, dB, dC),
    )
    _, dconv_w, dconv_b = triton_conv._bwd(dxBC, xbc_in, conv_weight, conv_bias, True, dx=dxbc_in)
    empty = dtp.new_empty(0)
    return (dzxbcdt, dconv_w, dconv_b, dA, dD if dD is not None else empty, dbias if dbias is not None else empty,
            dnorm.to(norm_weight.dtype))


# ----------------------------------------------------------------------------- custom ops
# Opaque to torch.compile (one graph node each way, shape-only fakes), as the scan and the conv are. Tagged
# needs_fixed_stride_order, not the default exact strides: inductor may give in_proj's output a padded row stride
# (128-byte aligned rows), and under exact strides it copied that 110 MB output back to the eager layout before
# the op, in the forward and again in the backward (3.5 ms of AiM-B's step on an H100). The kernels take any
# row stride, and the ops make contiguous what must be.
_TAGS = (torch.Tag.needs_fixed_stride_order,)

_FWD_SCHEMA = (
    "(Tensor zxbcdt, Tensor conv_weight, Tensor? conv_bias, Tensor A, Tensor? D, Tensor? dt_bias, Tensor norm_weight, "
    "float eps, int headdim, int ngroups, int dstate, int chunk_size) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor dout, Tensor zxbcdt, Tensor xBC, Tensor y, Tensor rstd, Tensor dtp, Tensor acs, Tensor conv_weight, "
    "Tensor? conv_bias, Tensor A, Tensor? D, Tensor? dt_bias, Tensor norm_weight, int headdim, int ngroups, "
    "int dstate, int chunk_size) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("avgkit_mamba::mixer_core_fwd", mutates_args=(), schema=_FWD_SCHEMA, tags=_TAGS)
def _core_fwd_op(zxbcdt: Tensor, conv_weight: Tensor, conv_bias: Tensor | None, A: Tensor, D: Tensor | None,
                 dt_bias: Tensor | None, norm_weight: Tensor, eps: float, headdim: int, ngroups: int, dstate: int,
                 chunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (output, conv output, scan output, the norm's row scales, processed dt, dt*A cumsum)."""
    return _fwd(zxbcdt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, eps, headdim, ngroups, dstate, chunk_size)


@_core_fwd_op.register_fake
def _(zxbcdt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, eps, headdim, ngroups, dstate, chunk_size):
    b, seqlen, _ = zxbcdt.shape
    d_inner = norm_weight.shape[0]
    nheads = d_inner // headdim
    dtp = zxbcdt.new_empty(b, nheads, triton_ssd._nchunks(seqlen, chunk_size), chunk_size, dtype=torch.float32)
    return (zxbcdt.new_empty(b, seqlen, d_inner), zxbcdt.new_empty(b, seqlen, conv_weight.shape[0]),
            zxbcdt.new_empty(b * seqlen, d_inner), dtp.new_empty(b * seqlen, ngroups), dtp, torch.empty_like(dtp))


@torch.library.custom_op("avgkit_mamba::mixer_core_bwd", mutates_args=(), schema=_BWD_SCHEMA, tags=_TAGS)
def _core_bwd_op(dout: Tensor, zxbcdt: Tensor, xBC: Tensor, y: Tensor, rstd: Tensor, dtp: Tensor, acs: Tensor,
                 conv_weight: Tensor, conv_bias: Tensor | None, A: Tensor, D: Tensor | None, dt_bias: Tensor | None,
                 norm_weight: Tensor, headdim: int, ngroups: int, dstate: int,
                 chunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (d zxbcdt, d conv weight, d conv bias, dA, dD, d dt_bias, d norm weight); empty where absent."""
    return _bwd(dout, zxbcdt, xBC, y, rstd, dtp, acs, conv_weight, conv_bias, A, D, dt_bias, norm_weight, headdim,
                ngroups, dstate, chunk_size)


@_core_bwd_op.register_fake
def _(dout, zxbcdt, xBC, y, rstd, dtp, acs, conv_weight, conv_bias, A, D, dt_bias, norm_weight, headdim, ngroups,
      dstate, chunk_size):
    def vec(t: Tensor | None) -> Tensor:
        return dtp.new_empty(0) if t is None else torch.empty_like(t, dtype=torch.float32)

    return (torch.empty_like(zxbcdt, memory_format=torch.contiguous_format), torch.empty_like(conv_weight),
            torch.empty_like(conv_bias) if conv_bias is not None else dtp.new_empty(0),
            torch.empty_like(A), vec(D), vec(dt_bias), torch.empty_like(norm_weight))


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    zxbcdt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, _eps, headdim, ngroups, dstate, chunk = inputs
    _, xBC, y, rstd, dtp, acs = output
    ctx.mark_non_differentiable(xBC, y, rstd, dtp, acs)  # internals kept for the backward only
    ctx.save_for_backward(zxbcdt, xBC, y, rstd, dtp, acs, conv_weight, conv_bias, A, D, dt_bias, norm_weight)
    ctx.dims = (headdim, ngroups, dstate, chunk)


def _backward(ctx: Any, dout: Tensor, *_internals: Any) -> tuple:
    zxbcdt, xBC, y, rstd, dtp, acs, conv_weight, conv_bias, A, D, dt_bias, norm_weight = ctx.saved_tensors
    dz, dcw, dcb, dA, dD, dbias, dnorm = _core_bwd_op(
        dout, zxbcdt, xBC, y, rstd, dtp, acs, conv_weight, conv_bias, A, D, dt_bias, norm_weight, *ctx.dims
    )
    present = lambda g, t: (g.to(t.dtype) if t is not None else None)  # noqa: E731
    return (dz, dcw, present(dcb, conv_bias), dA, present(dD, D), present(dbias, dt_bias), dnorm,
            None, None, None, None, None)


_core_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def mixer_core_triton(
    zxbcdt: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    A: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    norm_weight: Tensor,
    norm_eps: float,
    headdim: int,
    ngroups: int,
    dstate: int,
    chunk_size: int,
) -> Tensor:
    """``gated_rms_norm(chunk_scan(causal_conv(xBC), dt, ...), z)`` of ``in_proj``'s output ``zxbcdt``
    (b, l, 2*d_inner + 2*ngroups*dstate + nheads) -> (b, l, d_inner) in ``zxbcdt.dtype``, from a zero state.

    ``conv_weight`` (conv_dim, 4); ``A`` (nheads,) = -exp(A_log); the scan's dt gets ``dt_bias`` and softplus.
    Gradients flow to every tensor argument.
    """
    return _core_fwd_op(  # the op itself copies zxbcdt and conv_weight only where their layout needs it
        zxbcdt, conv_weight, None if conv_bias is None else conv_bias.contiguous(),
        A.float().contiguous(), None if D is None else D.contiguous(), None if dt_bias is None else dt_bias.contiguous(),
        norm_weight.contiguous(), float(norm_eps), headdim, ngroups, dstate, chunk_size,
    )[0]
