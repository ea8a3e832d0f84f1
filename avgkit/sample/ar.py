"""The built-in autoregressive sampler: CFG, temperature, top-k, top-p, per-image seeds."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from avgkit.interfaces import Backbone, Conditioner, Conditioning
from avgkit.registry import ComponentConfig
from avgkit.sample.filtering import sample_logits
from avgkit.sample.rng import uniform


class ARSamplerConfig(ComponentConfig):
    cfg_scale: float = Field(1.0, ge=0.0, description="classifier-free guidance scale; 1 disables CFG")
    cfg_schedule: Literal["constant", "linear"] = Field(
        "constant", description="constant scale, or linear from 1 at the first token to cfg_scale at the last"
    )
    temperature: float = Field(1.0, ge=0.0, description="softmax temperature; 0 is greedy")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens; 0 keeps all")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus mass; 1 keeps all")


class ARSampler:
    """Raster-order sampling through a backbone's decoding state.

    With CFG the conditioned and null rows run as one batch of 2B; guided logits are
    ``uncond + s * (cond - uncond)`` and both halves are fed the sampled token.
    """

    def __init__(self, config: ARSamplerConfig | None = None) -> None:
        self.config = config or ARSamplerConfig()

    def guidance(self, k: int, num_tokens: int) -> float:
        c = self.config
        if c.cfg_schedule == "linear" and num_tokens > 1:
            return 1.0 + (c.cfg_scale - 1.0) * k / (num_tokens - 1)
        return c.cfg_scale

    @torch.inference_mode()
    def sample(
        self,
        backbone: Backbone,
        conditioner: Conditioner,
        labels: Tensor,
        *,
        seed: int = 0,
        index: Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        c = self.config
        device = labels.device
        batch, n_tok = labels.shape[0], backbone.num_tokens
        index = torch.arange(batch, device=device) if index is None else index.to(device)
        use_cfg = c.cfg_scale != 1.0
        cond = conditioner(labels)
        if use_cfg:
            cond = Conditioning.cat([cond, conditioner.null(batch, device)])
        if dtype is not None:
            cond = cond.to(dtype)
        state = backbone.init_state(cond.batch_size, device=device, dtype=dtype)
        codes = torch.empty(batch, n_tok, dtype=torch.long, device=device)
        logits = backbone.prefill(state, cond)
        for k in range(n_tok):
            if k > 0:
                feed = codes[:, k - 1]
                logits = backbone.step(state, torch.cat([feed, feed]) if use_cfg else feed, cond)
            logits = logits.float()
            if use_cfg:
                cond_l, uncond_l = logits.chunk(2)
                logits = uncond_l + self.guidance(k, n_tok) * (cond_l - uncond_l)
            codes[:, k] = sample_logits(
                logits, uniform(seed, index, k), temperature=c.temperature, top_k=c.top_k, top_p=c.top_p
            )
        return codes
