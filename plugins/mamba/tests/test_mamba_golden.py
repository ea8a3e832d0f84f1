"""Our torch ops against tensors produced by mamba-ssm's own reference functions.

The files in ``golden/`` come from ``scripts/make_golden.py``.
"""

from __future__ import annotations

import torch
from avgkit_mamba.ops.ssd_torch import ssd_chunk_scan, ssd_step
from mamba_testutil import GOLDEN_DIR, max_rel_err
from safetensors.torch import load_file


def test_golden_minimal_discrete() -> None:
    g = load_file(str(GOLDEN_DIR / "ssd_minimal.safetensors"))
    y, final = ssd_chunk_scan(
        g["x"], g["dt"], g["A"], g["B"], g["C"], chunk_size=int(g["chunk_size"]),
        initial_states=g["initial_states"], return_final_states=True,
    )
    assert max_rel_err(y, g["y"]) < 1e-5
    assert max_rel_err(final, g["final_states"]) < 1e-5


def test_golden_chunk_scan_combined() -> None:
    g = load_file(str(GOLDEN_DIR / "ssd_combined.safetensors"))
    y = ssd_chunk_scan(
        g["x"], g["dt"], g["A"], g["B"], g["C"], chunk_size=int(g["chunk_size"]), D=g["D"], z=g["z"],
        dt_bias=g["dt_bias"], dt_softplus=True,
    )
    assert max_rel_err(y, g["y"]) < 1e-5


def test_golden_selective_state_update() -> None:
    g = load_file(str(GOLDEN_DIR / "ssd_step.safetensors"))
    state = g["state"].clone()
    y = ssd_step(state, g["x"], g["dt"], g["A"], g["B"], g["C"], D=g["D"], z=g["z"], dt_bias=g["dt_bias"],
                 dt_softplus=True)
    assert max_rel_err(y, g["y"]) < 1e-5
    assert max_rel_err(state, g["new_state"]) < 1e-5
    assert not torch.equal(state, g["state"])  # the update happened in place
