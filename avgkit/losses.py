"""Output projection + cross-entropy by chunks of rows, without the full logits.

The plain training loss multiplies the final hidden states (B*N, D) by the head
(V, D)^T, keeps the (B*N, V) logits (in fp32 for the loss), and autograd keeps another
tensor that size for the gradient: at 64 x 256 tokens and V = 16384 that is 1 GiB each.
:func:`linear_cross_entropy` computes the same mean cross-entropy ``chunk_rows`` rows
at a time and forms the gradients of the hidden states and of the head weight in the
same pass, so at most one chunk of logits exists at a time.

Numerics follow the plain path under autocast: the matmuls run in the autocast dtype
(bf16 on a GPU), the softmax and the loss in fp32; the head's gradient is summed over
chunks in fp32. Without autocast everything is fp32 and the loss and gradients equal
the plain path's to rounding.

A backbone opts in with ``head_features(codes, cond) -> (hidden, weight)``: the input
of its last linear map (B, N, D), one row per image token, and that map's weight
(V, D) (no bias). Backbones without the method train on their logits as before.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
from torch import Tensor

#: Rows per chunk when not given: about 64 Mi logits (256 MiB in fp32) per chunk.
DEFAULT_LOGITS_PER_CHUNK = 1 << 26


def default_chunk_rows(vocab: int) -> int:
    return max(1, DEFAULT_LOGITS_PER_CHUNK // max(1, vocab))


def _compute_dtype(x: Tensor) -> torch.dtype:
    dev = x.device.type
    if dev in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``x @ weight.T`` against ``targets``; gradients formed in forward."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, targets: Tensor, chunk_rows: int, dtype: torch.dtype,
                need_grad: bool, compiled: bool) -> Tensor:
        n = x.shape[0]
        w = weight.to(dtype)
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if need_grad and ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if need_grad and ctx.needs_input_grad[1] else None
        softmax_grad = _chunk_kernel(x.device, compiled)
        for start in range(0, n, chunk_rows):
            xc = x[start : start + chunk_rows].to(dtype)
            tc = targets[start : start + chunk_rows]
            logits = xc @ w.t()  # (rows, V) in the compute dtype: the only logits alive
            if grad_x is None and grad_w is None:
                loss += _chunk_loss(logits, tc)
                continue
            chunk_loss, g = softmax_grad(logits, tc, 1.0 / n)
            loss += chunk_loss
            del logits
            if grad_x is not None:
                grad_x[start : start + chunk_rows] = (g @ w).to(x.dtype)
            if grad_w is not None:
                grad_w += (g.t() @ xc).float()
            del g
        ctx.save_for_backward(
            grad_x if grad_x is not None else torch.empty(0, device=x.device),
            grad_w.to(weight.dtype) if grad_w is not None else torch.empty(0, device=x.device),
        )
        ctx.has = (grad_x is not None, grad_w is not None)
        return loss / n

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_x, grad_w = ctx.saved_tensors
        gx = grad_x * grad_out.to(grad_x.dtype) if ctx.has[0] else None
        gw = grad_w * grad_out.to(grad_w.dtype) if ctx.has[1] else None
        return gx, gw, None, None, None, None, None


def _chunk_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Summed cross-entropy of a chunk's rows, in fp32."""
    lf = logits.float()
    return (torch.logsumexp(lf, dim=-1) - lf.gather(1, targets[:, None])[:, 0]).sum()


def _softmax_grad(logits: Tensor, targets: Tensor, scale: float, in_place: bool) -> tuple[Tensor, Tensor]:
    """(summed cross-entropy of the rows, ``scale * (softmax - onehot)`` in the logits' dtype), fp32 inside.

    Compiled (``in_place=False``), inductor makes this one kernel that reads the low-precision
    logits twice and writes the gradient once; eager, the same math took about ten full passes
    over fp32 logits (5% of a compiled AiM-B step on an H100). Eager runs it in place over the
    fp32 logits (which the caller drops) so that no second chunk-sized tensor exists.
    """
    lf = logits.float()
    lse = torch.logsumexp(lf, dim=-1, keepdim=True)
    loss = (lse[:, 0] - lf.gather(1, targets[:, None])[:, 0]).sum()
    if in_place:
        g = lf.sub_(lse).exp_()
        g.scatter_add_(1, targets[:, None], torch.full_like(lse, -1.0)).mul_(scale)
    else:
        onehot = torch.arange(lf.shape[1], device=lf.device)[None, :] == targets[:, None]
        g = (torch.exp(lf - lse) - onehot.to(lf.dtype)) * scale
    return loss, g.to(logits.dtype)


_compiled: dict[str, Any] = {}


def _chunk_kernel(device: torch.device, compiled: bool):
    """The chunk's softmax gradient: compiled on a GPU when asked (one fused kernel; the shapes are
    fixed, so it compiles once per chunk size), else eager and in place."""
    if device.type != "cuda" or not compiled:
        return functools.partial(_softmax_grad, in_place=True)
    if "fn" not in _compiled:
        _compiled["fn"] = functools.partial(torch.compile(_softmax_grad, dynamic=False, fullgraph=True),
                                            in_place=False)
    return _compiled["fn"]


def linear_cross_entropy(x: Tensor, weight: Tensor, targets: Tensor, *, chunk_rows: int | None = None,
                         compiled: bool = False) -> Tensor:
    """``F.cross_entropy(F.linear(x, weight).float(), targets)`` without materialising the logits.

    ``x`` (..., D) and ``targets`` (...) flatten to rows; ``weight`` is (V, D). Under
    autocast the matmuls use the autocast dtype, as ``F.linear`` would. ``compiled``: on a
    GPU, each chunk's softmax gradient runs as one ``torch.compile``d kernel
    (``ARModel.compile_loss``, which the trainer sets with compiled blocks).
    """
    if x.shape[:-1] != targets.shape:
        raise ValueError(f"hidden states {tuple(x.shape)} do not match targets {tuple(targets.shape)}")
    dtype = _compute_dtype(x)
    rows = x.reshape(-1, x.shape[-1])
    need_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    chunk = chunk_rows or default_chunk_rows(weight.shape[0])
    off = torch.autocast(x.device.type, enabled=False) if x.device.type != "meta" else contextlib.nullcontext()
    with off:
        return _LinearCrossEntropy.apply(rows, weight, targets.reshape(-1), chunk, dtype, need_grad, compiled)
