"""Temperature, top-k and top-p filtering and inverse-CDF sampling of logits."""

from __future__ import annotations

import torch
from torch import Tensor


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
