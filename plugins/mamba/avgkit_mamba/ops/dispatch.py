"""Choosing between the PyTorch and Triton implementations of each op: the only place that does.

The mixer and the backbone call these functions and never choose a path themselves:

| op | PyTorch | Triton |
|---|---|---|
| :func:`causal_conv` (training, teacher forcing: whole sequence from zeros) | ``conv_torch.causal_conv1d`` | ``triton_conv`` |
| :func:`chunk_scan` (training, prefill) | ``ssd_torch.ssd_chunk_scan`` | ``triton_ssd`` |
| :func:`mixer_core` (conv + scan + gated norm from ``in_proj``'s output, from zeros) | the three ops above and ``GatedRMSNorm`` | ``triton_mixer_core`` (one autograd op) |
| :func:`fused_step` (conv + SSM update + skip + gate) | :func:`fused_step_torch` | ``triton_step.fused_step_triton`` |
| :func:`decode_step` (a mixer's step from ``in_proj``'s output, with its norm) | :func:`decode_step_torch` | ``triton_step.decode_step_triton``, or ``triton_step_fused`` (``kernel="one-launch"``) |
| :func:`decode_step_deferred` (the same, its norm's per-row factor left to the caller where the kernel defers it) | :func:`decode_step_torch` (never defers) | ``triton_step.decode_step_deferred_triton`` |
| :func:`decode_step_projected` (the same from ``in_proj``'s input) | ``F.linear`` + :func:`decode_step_deferred` | ``triton_step.decode_step_projected_triton`` (``kernel="fused-in-proj"``, or ``"auto"`` at ``FUSED_IN_PROJ_MAX_ROWS`` rows or fewer: the conv in ``in_proj``'s epilogue, ``triton_in_proj``), else ``F.linear`` + :func:`decode_step_deferred` |
| :func:`window_step` / :func:`window_step_deferred` (the same from the chunked form's state and window caches) | :func:`window_step_torch` (never defers) | ``triton_window`` |
| :func:`dual_step` (the same from the dual-form caches) | :func:`dual_step_torch` | ``triton_dual`` |
| :func:`add_norm_modulate` (a decode step's block boundary) | ``norm_torch.add_norm_modulate`` | ``triton_norm`` |

:func:`decode_form_for` chooses the decoding layout that ``decode_form: auto`` means (the chunked form's kernels
pay on Triton with a one-byte state).

``impl`` is one of ``"auto"`` (Triton on a CUDA tensor when Triton imports, else
PyTorch), ``"torch"`` or ``"triton"``. Triton modules are imported on first use only,
so importing this package never imports Triton.

Autotuning: each Triton scan kernel benchmarks a few tile configs on its first call for a
given problem shape and dtype; the choice is cached in memory and, where Triton
supports it, on disk in Triton's cache directory (``$TRITON_CACHE_DIR``, default
``~/.triton/cache``), so later runs start fast. Under ``TRITON_INTERPRET=1`` one
pinned config is used. The decode-step kernels use a fixed tile rule (``triton_step._tile``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from avgkit_mamba.ops import conv_torch, norm_torch, ssd_torch
from avgkit_mamba.ops.norm_torch import DeferredNorm

try:  # the core's error type when avgkit is installed
    from avgkit.errors import AvgkitError as _ImplError
except ImportError:  # pragma: no cover - standalone use of the ops
    _ImplError = ValueError  # type: ignore[assignment,misc]

Impl = Literal["auto", "torch", "triton"]
IMPLS = ("auto", "torch", "triton")
#: Triton kernels of a mixer's decode step (:func:`decode_step`, :func:`decode_step_projected`)
STEP_KERNELS = ("two-launch", "one-launch", "fused-in-proj", "auto")
#: ``kernel="auto"`` of :func:`decode_step_projected`: ``fused-in-proj`` for this many rows or fewer (its single
#: Triton launch beats cuBLAS and the conv's launch at 32 rows on an H100, loses at 128:
#: benchmarks/results/decode_linear_fused_in_proj_h100.json), ``two-launch`` above
FUSED_IN_PROJ_MAX_ROWS = 32

__all__ = [
    "IMPLS",
    "FUSED_IN_PROJ_MAX_ROWS",
    "STEP_KERNELS",
    "Impl",
    "add_norm_modulate",
    "causal_conv",
    "chunk_scan",
    "decode_step",
    "decode_step_deferred",
    "decode_step_projected",
    "decode_form_for",
    "decode_step_torch",
    "dual_step",
    "dual_step_torch",
    "fused_step",
    "fused_step_torch",
    "mixer_core",
    "mixer_core_applies",
    "resolve_impl",
    "triton_available",
    "window_step",
    "window_step_deferred",
    "window_step_torch",
]


_TRITON_OK: bool | None = None


# torch.compile calls this once while tracing and keeps the result (no functools.cache:
# Dynamo warns about tracing through it)
@torch.compiler.assume_constant_result
def triton_available() -> bool:
    """Whether Triton can be imported (checked once)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            import triton  # noqa: F401
        except Exception:
            _TRITON_OK = False
        else:
            _TRITON_OK = True
    return _TRITON_OK


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_impl(impl: str, device: torch.device | str) -> Literal["torch", "triton"]:
    """The implementation that ``impl`` means for tensors on ``device``."""
    if impl not in IMPLS:
        raise _ImplError(f"unknown kernel impl {impl!r}; use one of {', '.join(IMPLS)}")
    on_cuda = torch.device(device).type == "cuda"
    if impl == "torch":
        return "torch"
    if impl == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    if not triton_available():
        raise _ImplError("impl 'triton' needs the triton package, which is not importable; install it or use impl 'torch'")
    if not on_cuda and not _interpreting():
        raise _ImplError(
            f"impl 'triton' needs CUDA tensors but got device {torch.device(device)}; use impl 'torch' "
            "(or set TRITON_INTERPRET=1 to run the kernels on the CPU, slowly)"
        )
    return "triton"


def decode_form_for(state_dtype: torch.dtype, impl: str, device: torch.device | str) -> Literal["recurrent", "chunked"]:
    """The decoding layout ``decode_form: auto`` means: the chunked form where its Triton kernels run with a
    one-byte state (the state read as words, written once a window), else the recurrent one."""
    return "chunked" if state_dtype == torch.int8 and resolve_impl(impl, device) == "triton" else "recurrent"


#: Input dtypes the whole-sequence Triton kernels (conv, scan) take; ``auto`` runs others in PyTorch
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: The whole-sequence conv on Triton wherever the impl is Triton (False: the PyTorch form, which under
#: torch.compile is ``conv_torch``'s shifted multiply-adds); a switch for timing one against the other.
TRITON_CONV = True


def causal_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = "silu", impl: str = "auto"
) -> Tensor:
    """Causal depthwise conv + activation of ``x`` (b, l, d) from zeros -> (b, l, d) contiguous.

    Channels-last on both sides (the mixer's layout); ``weight`` (d, w), ``bias`` (d,). The Triton
    kernels take width 4 (Mamba's ``d_conv``); other widths run in PyTorch whatever ``impl`` says.
    """
    use_triton = resolve_impl(impl, x.device) == "triton" and weight.shape[-1] == 4  # the kernels' width (Mamba's)
    if use_triton and impl == "auto" and (not TRITON_CONV or x.dtype not in _TRITON_DTYPES):
        use_triton = False
    if use_triton:
        from avgkit_mamba.ops.triton_conv import causal_conv_triton

        return causal_conv_triton(x, weight, bias, activation)
    y = conv_torch.causal_conv1d(x.transpose(1, 2), weight, bias, activation=activation)
    return y.transpose(1, 2).contiguous()


def _triton_scan_supports(x: Tensor, chunk_size: int) -> bool:
    """fp32/fp16/bf16 inputs and a power-of-two chunk of at least 16."""
    dtype_ok = x.dtype in _TRITON_DTYPES
    return dtype_ok and chunk_size >= 16 and chunk_size & (chunk_size - 1) == 0


def chunk_scan(
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
    impl: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked SSD scan; arguments as :func:`avgkit_mamba.ops.ssd_torch.ssd_chunk_scan`."""
    kwargs = dict(
        chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
        initial_states=initial_states, return_final_states=return_final_states,
    )
    use_triton = resolve_impl(impl, x.device) == "triton"
    if use_triton and impl == "auto" and not _triton_scan_supports(x, chunk_size):
        use_triton = False  # "auto" quietly takes the torch path where the kernels do not apply
    if use_triton:
        from avgkit_mamba.ops.triton_ssd import chunk_scan_triton

        return chunk_scan_triton(x, dt, A, B, C, **kwargs)
    return ssd_torch.ssd_chunk_scan(x, dt, A, B, C, **kwargs)


#: A mixer's whole-sequence conv, scan and gated norm as one Triton autograd op wherever the impl is Triton
#: (False: three ops, the conv's and the scan's custom ops and the norm in PyTorch); a switch for timing one
#: against the other.
TRITON_MIXER_CORE = True


def mixer_core_applies(zxbcdt: Tensor, d_conv: int, chunk_size: int, impl: str) -> bool:
    """Whether :func:`mixer_core` runs for a whole sequence from a zero state (no padding mask): the impl is
    Triton, the conv is Mamba's width 4 and the scan's kernels take the dtype and chunk. Else the mixer runs
    :func:`causal_conv`, :func:`chunk_scan` and its ``GatedRMSNorm`` one after another."""
    if resolve_impl(impl, zxbcdt.device) != "triton" or d_conv != 4:
        return False
    return TRITON_MIXER_CORE and _triton_scan_supports(zxbcdt, chunk_size)


def mixer_core(
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
    """``rmsnorm(scan(conv(xBC)) * silu(z)) * norm_weight`` from ``in_proj``'s output (b, l, ...) -> (b, l,
    d_inner), as one Triton op (where :func:`mixer_core_applies`); see ``triton_mixer_core.mixer_core_triton``."""
    from avgkit_mamba.ops.triton_mixer_core import mixer_core_triton

    return mixer_core_triton(zxbcdt, conv_weight, conv_bias, A, D, dt_bias, norm_weight, norm_eps, headdim, ngroups,
                             dstate, chunk_size)


def fused_step_torch(
    xBC: Tensor,
    dt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    ssm_state: Tensor,
    A: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    z: Tensor | None,
    headdim: int,
    ngroups: int,
    state_scale: Tensor | None = None,
) -> Tensor:
    """Reference for the fused decode step: conv_step, then ssd_step (states in place)."""
    ssd_torch.check_step_shapes(xBC, conv_state, conv_weight, ssm_state, headdim, ngroups)
    b = xBC.shape[0]
    nheads, _, dstate = ssm_state.shape[1:]
    d_inner = nheads * headdim
    xBC = conv_torch.conv_step(xBC, conv_state, conv_weight, conv_bias, activation="silu")
    x, Bv, Cv = torch.split(xBC, [d_inner, ngroups * dstate, ngroups * dstate], dim=-1)
    y = ssd_torch.ssd_step(
        ssm_state,
        x.reshape(b, nheads, headdim),
        dt,
        A,
        Bv.reshape(b, ngroups, dstate),
        Cv.reshape(b, ngroups, dstate),
        D=D,
        z=None if z is None else z.reshape(b, nheads, headdim),
        dt_bias=dt_bias,
        dt_softplus=True,
        state_scale=state_scale,
    )
    return y.reshape(b, d_inner)


def fused_step(
    xBC: Tensor,
    dt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    ssm_state: Tensor,
    A: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    z: Tensor | None,
    headdim: int,
    ngroups: int,
    impl: str = "auto",
    state_scale: Tensor | None = None,
) -> Tensor:
    """One decode step of a Mamba-2 layer after ``in_proj``, states updated in place.

    xBC (b, conv_dim) before the conv, dt (b, h) raw (bias and softplus applied here),
    conv_state (b, conv_dim, w), conv_weight (conv_dim, w), ssm_state (b, h, p, n),
    z (b, h*p) or None: when given the output is gated by ``silu(z)``; ``state_scale``
    (b, h, p) fp32 beside an int8 ``ssm_state`` (:mod:`avgkit_mamba.ops.state_quant`).
    Returns y (b, h*p) in ``xBC.dtype``.
    """
    args = (xBC, dt, conv_state, conv_weight, conv_bias, ssm_state, A, D, dt_bias, z, headdim, ngroups)
    if resolve_impl(impl, xBC.device) == "triton":
        from avgkit_mamba.ops.triton_step import fused_step_triton

        return fused_step_triton(*args, state_scale=state_scale)
    return fused_step_torch(*args, state_scale=state_scale)


def decode_step_torch(
    zxbcdt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    ssm_state: Tensor,
    A_log: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    norm_weight: Tensor,
    norm_eps: float,
    headdim: int,
    ngroups: int,
    state_scale: Tensor | None = None,
) -> Tensor:
    """Reference of :func:`decode_step`: split, :func:`fused_step_torch` (gated by ``z``), grouped RMSNorm."""
    nheads, _, dstate = ssm_state.shape[1:]
    z, xBC, dt = ssd_torch.split_zxbcdt(zxbcdt, nheads, headdim, ngroups, dstate)
    A = -torch.exp(A_log.float())  # in fp32 even for half-precision weights, or exp would overflow to -inf
    y = fused_step_torch(xBC, dt, conv_state, conv_weight, conv_bias, ssm_state, A, D, dt_bias, z, headdim, ngroups,
                         state_scale=state_scale)
    return _grouped_norm(y, norm_weight, norm_eps, ngroups)


def _check_step_kernel(kernel: str) -> None:
    if kernel not in STEP_KERNELS:
        raise _ImplError(f"unknown decode step kernel {kernel!r}; use one of {', '.join(STEP_KERNELS)}")


def decode_step(
    zxbcdt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    ssm_state: Tensor,
    A_log: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    norm_weight: Tensor,
    norm_eps: float,
    headdim: int,
    ngroups: int,
    impl: str = "auto",
    state_scale: Tensor | None = None,
    kernel: str = "two-launch",
) -> Tensor:
    """A mixer's decode step between ``in_proj`` and ``out_proj``, states updated in place.

    ``zxbcdt`` (b, 2*d_inner + 2*ngroups*d_state + nheads) is the ``in_proj`` output;
    ``conv_weight`` (conv_dim, w); returns ``rmsnorm(y * silu(z)) * norm_weight`` over
    groups of ``d_inner / ngroups`` channels, (b, d_inner) in ``zxbcdt.dtype``.
    ``state_scale`` as in :func:`fused_step`. ``kernel`` picks the Triton kernel:
    ``"two-launch"`` (:mod:`triton_step`: the state update and the norm, after the conv's own launch; the
    default) or ``"one-launch"`` (:mod:`triton_step_fused`, measured slower on an H100); ``"fused-in-proj"`` and
    ``"auto"`` move the conv into ``in_proj`` (:func:`decode_step_projected`), so from ``in_proj``'s output they are
    ``"two-launch"``; the torch path ignores it.
    """
    _check_step_kernel(kernel)
    args = (zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias, norm_weight, norm_eps,
            headdim, ngroups)
    if resolve_impl(impl, zxbcdt.device) == "triton":
        if kernel == "one-launch":
            from avgkit_mamba.ops.triton_step_fused import decode_step_fused_triton

            return decode_step_fused_triton(*args, state_scale=state_scale)
        from avgkit_mamba.ops.triton_step import decode_step_triton

        # the conv, the state update + gate, and the norm: three launches, reading in_proj's output in place
        return decode_step_triton(*args, state_scale=state_scale)
    return decode_step_torch(*args, state_scale=state_scale)


def decode_step_deferred(
    zxbcdt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    ssm_state: Tensor,
    A_log: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    norm_weight: Tensor,
    norm_eps: float,
    headdim: int,
    ngroups: int,
    impl: str = "auto",
    state_scale: Tensor | None = None,
    kernel: str = "two-launch",
) -> tuple[Tensor, DeferredNorm | None]:
    """:func:`decode_step` for a caller that applies the norm's per-row factor itself (the next block boundary,
    :func:`add_norm_modulate`'s ``y_norm``): ``(y, None)`` as :func:`decode_step`, or, where the two-launch
    Triton step defers the norm (its split's ``defer_norm``, a norm of one group), ``y * silu(z) * norm_weight``
    and its :class:`~avgkit_mamba.ops.norm_torch.DeferredNorm`."""
    if kernel == "two-launch" and resolve_impl(impl, zxbcdt.device) == "triton":
        from avgkit_mamba.ops.triton_step import decode_step_deferred_triton

        return decode_step_deferred_triton(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias,
                                           norm_weight, norm_eps, headdim, ngroups, state_scale=state_scale)
    return decode_step(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias, norm_weight,
                       norm_eps, headdim, ngroups, impl=impl, state_scale=state_scale, kernel=kernel), None


def decode_step_projected(
    x: Tensor,
    in_proj_weight: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    ssm_state: Tensor,
    A_log: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    norm_weight: Tensor,
    norm_eps: float,
    headdim: int,
    ngroups: int,
    impl: str = "auto",
    state_scale: Tensor | None = None,
    kernel: str = "two-launch",
) -> tuple[Tensor, DeferredNorm | None]:
    """:func:`decode_step_deferred` from ``in_proj``'s input ``x`` (b, d_model) and weight: with
    ``kernel="fused-in-proj"`` on the Triton path and a norm of one group, ``in_proj`` with the conv, dt and decay
    in its epilogue, then the state update (two launches, :func:`triton_step.decode_step_projected_triton`);
    ``kernel="auto"`` does so for ``FUSED_IN_PROJ_MAX_ROWS`` rows or fewer; otherwise ``F.linear`` then
    :func:`decode_step_deferred` (``two-launch`` for ``fused-in-proj`` and ``auto``). The same values either way,
    up to rounding."""
    _check_step_kernel(kernel)
    fused = kernel == "fused-in-proj" or (kernel == "auto" and x.shape[0] <= FUSED_IN_PROJ_MAX_ROWS)
    if fused and ngroups == 1 and resolve_impl(impl, x.device) == "triton":
        from avgkit_mamba.ops.triton_step import decode_step_projected_triton

        return decode_step_projected_triton(x, in_proj_weight, conv_state, conv_weight, conv_bias, ssm_state, A_log,
                                            D, dt_bias, norm_weight, norm_eps, headdim, ngroups, state_scale)
    return decode_step_deferred(torch.nn.functional.linear(x, in_proj_weight), conv_state, conv_weight, conv_bias,
                                ssm_state, A_log, D, dt_bias, norm_weight, norm_eps, headdim, ngroups, impl=impl,
                                state_scale=state_scale,
                                kernel="two-launch" if kernel in ("fused-in-proj", "auto") else kernel)


def _conv_step_heads(zxbcdt: Tensor, conv_state: Tensor, conv_weight: Tensor, conv_bias: Tensor | None,
                     cache_x: Tensor, cache_b: Tensor, ngroups: int) -> tuple[Tensor, ...]:
    """A cached-form step's inputs, shaped by its caches: (z, x) (b,h,p), (B, C) (b,g,n) after the conv, dt (b,h)."""
    b, _, nheads, headdim = cache_x.shape
    dstate = cache_b.shape[-1]
    d_inner = nheads * headdim
    z, xBC, dt = ssd_torch.split_zxbcdt(zxbcdt, nheads, headdim, ngroups, dstate)
    xBC = conv_torch.conv_step(xBC, conv_state, conv_weight, conv_bias, activation="silu")
    xs, Bs, Cs = torch.split(xBC, [d_inner, ngroups * dstate, ngroups * dstate], dim=-1)
    heads, groups = (b, nheads, headdim), (b, ngroups, dstate)
    return z.reshape(heads), xs.reshape(heads), Bs.reshape(groups), Cs.reshape(groups), dt


def _grouped_norm(y: Tensor, norm_weight: Tensor, norm_eps: float, ngroups: int) -> Tensor:
    """``rmsnorm(y) * norm_weight`` over groups of ``d_inner / ngroups`` channels, y (b, h, p) or (b, d_inner)."""
    y = y.reshape(y.shape[0], -1)
    return norm_torch.gated_rms_norm(y, None, norm_weight, norm_eps, y.shape[1] // ngroups)


def dual_step_torch(
    zxbcdt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    cache_x: Tensor,
    cache_b: Tensor,
    cache_dt: Tensor,
    cache_cum: Tensor,
    length: Tensor,
    A_log: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    norm_weight: Tensor,
    norm_eps: float,
    ngroups: int,
) -> Tensor:
    """Reference of :func:`dual_step`: conv_step, ``ssd_torch.ssd_dual_step``, grouped RMSNorm."""
    z, x, B, C, dt = _conv_step_heads(zxbcdt, conv_state, conv_weight, conv_bias, cache_x, cache_b, ngroups)
    y = ssd_torch.ssd_dual_step(cache_x, cache_b, cache_dt, cache_cum, length, x, dt, -torch.exp(A_log.float()), B,
                                C, D=D, z=z, dt_bias=dt_bias)
    return _grouped_norm(y, norm_weight, norm_eps, ngroups)


def dual_step(
    zxbcdt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    cache_x: Tensor,
    cache_b: Tensor,
    cache_dt: Tensor,
    cache_cum: Tensor,
    length: Tensor,
    A_log: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    norm_weight: Tensor,
    norm_eps: float,
    ngroups: int,
    impl: str = "auto",
) -> Tensor:
    """A mixer's dual-form decode step between ``in_proj`` and ``out_proj`` (caches as ``Mamba2DualState``).

    ``length`` (1,) int64 is this token's row; the caches are appended in place. Returns
    what :func:`decode_step` returns.
    """
    args = (zxbcdt, conv_state, conv_weight, conv_bias, cache_x, cache_b, cache_dt, cache_cum, length, A_log, D,
            dt_bias, norm_weight, norm_eps, ngroups)
    if resolve_impl(impl, zxbcdt.device) == "triton":
        from avgkit_mamba.ops.triton_dual import dual_step_triton

        return dual_step_triton(*args)
    return dual_step_torch(*args)


def window_step_torch(
    zxbcdt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    ssm_state: Tensor,
    state_scale: Tensor | None,
    cache_x: Tensor,
    cache_b: Tensor,
    cache_dt: Tensor,
    cache_cum: Tensor,
    length: Tensor,
    A_log: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    norm_weight: Tensor,
    norm_eps: float,
    ngroups: int,
) -> Tensor:
    """Reference of :func:`window_step`: conv_step, ``ssd_torch.ssd_window_step``, grouped RMSNorm."""
    z, x, B, C, dt = _conv_step_heads(zxbcdt, conv_state, conv_weight, conv_bias, cache_x, cache_b, ngroups)
    y = ssd_torch.ssd_window_step(ssm_state, state_scale, cache_x, cache_b, cache_dt, cache_cum,
                                  torch.remainder(length, cache_x.shape[1]), x, dt, -torch.exp(A_log.float()), B, C,
                                  D=D, z=z, dt_bias=dt_bias)
    return _grouped_norm(y, norm_weight, norm_eps, ngroups)


def window_step(
    zxbcdt: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    ssm_state: Tensor,
    state_scale: Tensor | None,
    cache_x: Tensor,
    cache_b: Tensor,
    cache_dt: Tensor,
    cache_cum: Tensor,
    length: Tensor,
    A_log: Tensor,
    D: Tensor | None,
    dt_bias: Tensor | None,
    norm_weight: Tensor,
    norm_eps: float,
    ngroups: int,
    impl: str = "auto",
) -> Tensor:
    """A mixer's chunked-form decode step between ``in_proj`` and ``out_proj`` (``Mamba2ChunkedState``).

    ``length`` (1,) int64 counts the tokens decoded since prefill; this token's window
    row is ``length % K``. The SSM state is written only at a window's last row. Returns
    what :func:`decode_step` returns.
    """
    return _window_step(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, state_scale, cache_x, cache_b,
                        cache_dt, cache_cum, length, A_log, D, dt_bias, norm_weight, norm_eps, ngroups, impl=impl,
                        defer=False)[0]


def window_step_deferred(*args: Any, impl: str = "auto") -> tuple[Tensor, DeferredNorm | None]:
    """:func:`window_step` (same positional arguments) for a caller that applies the norm's per-row factor itself
    (as :func:`decode_step_deferred`): on Triton with a norm of one group, ``y * silu(z) * norm_weight`` and its
    :class:`~avgkit_mamba.ops.norm_torch.DeferredNorm`; else the normed output and ``None``."""
    return _window_step(*args, impl=impl, defer=True)


def _window_step(*args: Any, impl: str, defer: bool) -> tuple[Tensor, DeferredNorm | None]:
    if resolve_impl(impl, args[0].device) == "triton":
        from avgkit_mamba.ops import triton_window

        return (triton_window.window_step_deferred_triton(*args) if defer
                else (triton_window.window_step_triton(*args), None))
    return window_step_torch(*args), None


def add_norm_modulate(
    y: Tensor,
    gate: Tensor | None,
    residual: Tensor | None,
    weight: Tensor,
    eps: float,
    shift: Tensor | None,
    scale: Tensor | None,
    residual_in_fp32: bool,
    impl: str = "auto",
    y_norm: DeferredNorm | None = None,
    second_norm: tuple[Tensor, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """A decode step's block boundary over (B, D); see :func:`avgkit_mamba.ops.norm_torch.add_norm_modulate`."""
    if resolve_impl(impl, y.device) == "triton":
        from avgkit_mamba.ops.triton_norm import add_norm_modulate_triton

        return add_norm_modulate_triton(y, gate, residual, weight, shift, scale, eps,
                                        torch.float32 if residual_in_fp32 else y.dtype, y_norm, second_norm)
    return norm_torch.add_norm_modulate(y, gate, residual, weight, eps, shift, scale, residual_in_fp32, y_norm,
                                        second_norm)
