"""The AiM stack on mamba-ssm's own Mamba-2 modules: a GPU oracle and speed baseline.

``reference_backbone(backbone)`` returns a copy of an avgkit ``MambaBackbone`` whose
mixers are mamba-ssm ``Mamba2`` modules holding the same weights (the parameter names
are identical), so the same sampler and trainer drive both, and any difference in
output or speed is the kernels'. Needs mamba-ssm (the optional ``reference`` extra) and
a GPU; its compiled Mamba-1 extension is not needed.
"""

from __future__ import annotations

import copy
import sys
import types

import torch
from torch import Tensor, nn

from avgkit_mamba.mixer import Mamba2Mixer, Mamba2State


def import_mamba2() -> type:
    """mamba-ssm's ``Mamba2`` class, stubbing the Mamba-1 CUDA extension it imports eagerly."""
    if "selective_scan_cuda" not in sys.modules:
        try:
            import selective_scan_cuda  # noqa: F401
        except ImportError:
            sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
    from mamba_ssm.modules.mamba2 import Mamba2

    return Mamba2


class ReferenceMixer(nn.Module):
    """mamba-ssm ``Mamba2`` behind avgkit's mixer API (forward with state, step, allocate_state)."""

    def __init__(self, ours: Mamba2Mixer, *, mem_eff_path: bool = False) -> None:
        super().__init__()
        Mamba2 = import_mamba2()
        w = ours.in_proj.weight
        self.inner = Mamba2(
            ours.d_model, d_state=ours.d_state, d_conv=ours.d_conv, expand=ours.expand, headdim=ours.headdim,
            ngroups=ours.ngroups, chunk_size=ours.chunk_size, use_mem_eff_path=mem_eff_path, layer_idx=0,
            device=w.device, dtype=w.dtype,
        )
        self.inner.load_state_dict(ours.state_dict())
        self.d_model, self.conv_dim = ours.d_model, ours.conv_dim
        self.nheads, self.headdim, self.d_state, self.d_conv = ours.nheads, ours.headdim, ours.d_state, ours.d_conv
        self.out_proj = self.inner.out_proj  # the backbone re-initialises out_proj by name
        self.impl = "torch"  # block boundaries (add, norm, modulate) run unfused around it

    def allocate_state(self, batch: int, device=None, dtype=None, ssm_dtype=torch.float32) -> Mamba2State:
        if not ssm_dtype.is_floating_point:
            raise ValueError(f"mamba-ssm's step has no {ssm_dtype} state; use state_dtype fp32 or bf16 with the "
                             "reference stack")
        w = self.inner.conv1d.weight
        conv = torch.zeros(batch, self.conv_dim, self.d_conv, device=device or w.device, dtype=dtype or w.dtype)
        ssm = torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device or w.device, dtype=ssm_dtype)
        return Mamba2State(conv, ssm)

    def forward(self, x: Tensor, state: Mamba2State | None = None) -> Tensor:
        if state is None:
            return self.inner(x)
        from mamba_ssm.utils.generation import InferenceParams

        params = InferenceParams(max_seqlen=x.shape[1], max_batch_size=x.shape[0])
        params.key_value_memory_dict[0] = (state.conv, state.ssm)
        return self.inner(x, inference_params=params)

    def step(self, x: Tensor, state: Mamba2State, length: Tensor | None = None) -> Tensor:
        # ``length`` belongs to the dual form's caches; the recurrent state has no use for it
        out, _, _ = self.inner.step(x[:, None], state.conv, state.ssm)
        return out[:, 0]

    def step_deferred(self, x: Tensor, state: Mamba2State, length: Tensor | None = None) -> tuple[Tensor, None]:
        """The block's call: mamba-ssm's step normalises its own output (nothing deferred)."""
        return self.step(x, state, length), None


def reference_backbone(backbone: nn.Module, *, mem_eff_path: bool = False) -> nn.Module:
    """A copy of ``backbone`` running on mamba-ssm's Mamba-2 modules."""
    ref = copy.deepcopy(backbone)
    for block in ref.layers:
        block.mixer = ReferenceMixer(block.mixer, mem_eff_path=mem_eff_path)
    return ref
