"""Temperature, top-k and top-p filtering and inverse-CDF sampling of logits.

:func:`draw_tokens` is a sampling step's whole draw (CFG combine, filters, pick) and the one
place that chooses its implementation: the PyTorch ops (:func:`draw_tokens_torch`, the CPU
path and the reference) or, on a GPU without top-k and top-p, one Triton kernel
(:mod:`avgkit.sample.draw_triton`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from avgkit.errors import AvgkitError

DrawImpl = Literal["auto", "torch", "triton"]


def sample_logits(
    logits: Tensor, u: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> Tensor:
    """Draw one token per row of ``logits`` (B, V) using uniforms ``u`` (B,).

    Top-k first (``0`` keeps all), then top-p on what is left, always keeping the most
    likely token; ``temperature == 0`` is greedy. Uses ``torch.topk`` rather than a
    full sort whenever ``top_k`` is set.
    """
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    vocab = logits.shape[-1]
    if top_k and top_k < vocab:
        vals, idx = torch.topk(logits, top_k, dim=-1)
    elif top_p < 1.0:
        vals, idx = torch.sort(logits, dim=-1, descending=True)
    else:
        vals, idx = logits, None
    probs = torch.softmax(vals, dim=-1)
    if top_p < 1.0:
        # probabilities are sorted descending here; drop a token once the mass before it reaches top_p
        before = torch.cumsum(probs, dim=-1) - probs
        probs = probs * (before < top_p)
    pick = _inverse_cdf(probs, u)
    return pick.squeeze(-1) if idx is None else idx.gather(-1, pick).squeeze(-1)


@torch.library.custom_op("avgkit::inverse_cdf", mutates_args=())
def _inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """(B, 1) index of the first token whose float64 CDF exceeds ``u`` times the total mass.

    An opaque op to torch.compile (no graph break): inductor (torch 2.11) fails to generate
    a float64 scan over a 16384-wide row, so this runs PyTorch's own kernels.
    """
    cdf = torch.cumsum(probs.double(), dim=-1)
    target = u.to(cdf.device).unsqueeze(-1) * cdf[:, -1:]
    pick = torch.searchsorted(cdf, target, right=True).clamp_(max=probs.shape[-1] - 1)
    # never pick a token whose probability was filtered to zero (u at an edge)
    return torch.where(probs.gather(-1, pick) > 0, pick, probs.argmax(-1, keepdim=True))


@_inverse_cdf.register_fake
def _(probs: Tensor, u: Tensor) -> Tensor:
    return probs.new_empty((probs.shape[0], 1), dtype=torch.long)


_TRITON_OK: bool | None = None


def _triton_available() -> bool:
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            import triton  # noqa: F401
            _TRITON_OK = True
        except ImportError:
            _TRITON_OK = False
    return _TRITON_OK


def guidance_scale(k: Tensor | int, num_tokens: int, cfg_scale: float, linear: bool) -> Tensor | float:
    """The CFG scale at token ``k`` (an int, or (1,) int64 on the device: a (1, 1) fp32 scale): constant, or linear
    from 1 at the first token to ``cfg_scale`` at the last."""
    if linear and num_tokens > 1:
        k = k.float().view(1, 1) if isinstance(k, Tensor) else k
        return 1.0 + (cfg_scale - 1.0) * k / (num_tokens - 1)
    return cfg_scale


def draw_tokens_torch(logits: Tensor, u: Tensor, k: Tensor, codes: Tensor, *, cfg_scale: float = 1.0,
                      linear: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> None:
    """:func:`draw_tokens` with PyTorch ops: guided logits ``uncond + s * (cond - uncond)`` in fp32, then
    :func:`sample_logits` with each image's uniform for token ``k``."""
    logits = logits.float()
    if cfg_scale != 1.0:
        cond_l, uncond_l = logits.chunk(2)
        logits = uncond_l + guidance_scale(k, codes.shape[1], cfg_scale, linear) * (cond_l - uncond_l)
    tok = sample_logits(logits, u.index_select(1, k)[:, 0], temperature=temperature, top_k=top_k, top_p=top_p)
    codes.index_copy_(1, k, tok[:, None])


def draw_tokens(logits: Tensor, u: Tensor, k: Tensor, codes: Tensor, *, cfg_scale: float = 1.0, linear: bool = False,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, impl: DrawImpl = "auto") -> None:
    """Draw token ``k`` ((1,) int64, on the device) of every image into ``codes`` (B, N) int64.

    ``logits`` (B, V), or (2B, V) with CFG (``cfg_scale`` other than 1: conditioned rows first); ``u`` (B, N)
    float64, each image's uniforms. ``impl``: ``torch`` (:func:`draw_tokens_torch`), ``triton`` (one kernel:
    CUDA, a positive temperature, no top-k or top-p) or ``auto`` (Triton where it applies). Both give the same
    tokens up to rounding (:mod:`avgkit.sample.draw_triton`).
    """
    if impl not in ("auto", "torch", "triton"):
        raise AvgkitError(f"unknown draw_impl {impl!r}; use auto, torch or triton")
    unfiltered = temperature > 0 and (not top_k or top_k >= logits.shape[-1]) and top_p >= 1.0
    fused = logits.is_cuda and unfiltered and _triton_available()
    if impl == "triton" and not fused:
        raise AvgkitError("draw_impl triton draws on a CUDA device with Triton, a positive temperature and no "
                          "top-k or top-p; use draw_impl auto (Triton where it applies) or torch")
    if fused and impl != "torch":
        _draw_tokens_triton(logits, u, k, codes, cfg_scale, linear, codes.shape[1], temperature)
        return
    draw_tokens_torch(logits, u, k, codes, cfg_scale=cfg_scale, linear=linear, temperature=temperature, top_k=top_k,
                      top_p=top_p)


@torch.library.custom_op("avgkit::draw_tokens", mutates_args=("codes",))
def _draw_tokens_triton(logits: Tensor, u: Tensor, k: Tensor, codes: Tensor, cfg_scale: float, linear: bool,
                        num_tokens: int, temperature: float) -> None:
    """The Triton draw as one op, opaque to torch.compile (its kernel and its write into ``codes``)."""
    from avgkit.sample.draw_triton import draw_tokens_triton

    draw_tokens_triton(logits, u, k, codes, cfg_scale=cfg_scale, linear=linear, num_tokens=num_tokens,
                       temperature=temperature)


@_draw_tokens_triton.register_fake
def _(logits: Tensor, u: Tensor, k: Tensor, codes: Tensor, cfg_scale: float, linear: bool, num_tokens: int,
      temperature: float) -> None:
    return None
