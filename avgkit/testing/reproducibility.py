"""Is an image a function of (checkpoint, settings, seed, image index) alone? A check for any backbone.

Samples ``n`` images twice in one call each and once more in calls of ``part`` images,
all with the sampler's ``decode_width``, and names the first image and token where a
later run left the first one. Used by the plugins' GPU tests at full model size and by
``benchmarks/reproducibility.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from avgkit.interfaces import Backbone, Conditioner
from avgkit.sample.ar import ARSampler, ARSamplerConfig

__all__ = ["assert_reproducible", "first_difference", "sample_runs"]


def sample_runs(backbone: Backbone, conditioner: Conditioner, config: ARSamplerConfig, *, n: int, part: int,
                seed: int = 0, num_classes: int | None = None) -> dict[str, Tensor]:
    """Tokens of ``n`` images (image i of class ``i % num_classes``): one call, a repeat, calls of ``part``."""
    device = next(backbone.parameters()).device
    classes = num_classes or getattr(conditioner, "num_classes", 10)
    labels = torch.arange(n, device=device) % classes
    sampler = ARSampler(config)
    once = sampler.sample(backbone, conditioner, labels, seed=seed).cpu()
    again = sampler.sample(backbone, conditioner, labels, seed=seed).cpu()
    parts = torch.cat([sampler.sample(backbone, conditioner, labels[s : s + part], seed=seed,
                                      index=torch.arange(s, min(s + part, n), device=device)).cpu()
                       for s in range(0, n, part)])
    return {"once": once, "again": again, "parts": parts}


def first_difference(ref: Tensor, other: Tensor) -> str | None:
    """``None`` when equal, else which images differ and the first token where one does."""
    if torch.equal(ref, other):
        return None
    rows = (ref != other).any(1).nonzero()[:, 0]
    first = int((ref[rows[0]] != other[rows[0]]).nonzero()[0, 0])
    return f"{len(rows)} of {len(ref)} images differ (image {int(rows[0])} first at token {first})"


def assert_reproducible(backbone: Backbone, conditioner: Conditioner, *, path: str, n: int = 16, part: int = 4,
                        decode_width: int = 8) -> None:
    """The paper's sampling settings (CFG 2, top-k 600, top-p 0.98) on one code path (``eager``,
    ``graph`` or ``compiled``): the same tokens on a repeated call and in calls of ``part``."""
    config = ARSamplerConfig(cfg_scale=2.0, top_k=600, top_p=0.98, decode_width=decode_width,
                             cuda_graph=path != "eager", compile=path == "compiled")
    runs = sample_runs(backbone, conditioner, config, n=n, part=part)
    for other in ("again", "parts"):
        problem = first_difference(runs["once"], runs[other])
        assert problem is None, f"{path}: {'a repeated call' if other == 'again' else f'calls of {part}'}: {problem}"
