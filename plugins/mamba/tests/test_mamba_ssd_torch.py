"""The pure-PyTorch SSD ops against a token-by-token recurrence."""

from __future__ import annotations

import pytest
import torch
from avgkit_mamba.ops.ssd_torch import ssd_chunk_scan, ssd_scan_naive, ssd_step
from mamba_testutil import max_rel_err, ssd_problem


def _scan(t: dict, chunk: int, final: bool = True):
    return ssd_chunk_scan(
        t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=chunk, D=t["D"], z=t["z"], dt_bias=t["dt_bias"],
        dt_softplus=True, initial_states=t["initial_states"], return_final_states=final,
    )


def _naive(t: dict):
    return ssd_scan_naive(
        t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"], dt_bias=t["dt_bias"], dt_softplus=True,
        initial_states=t["initial_states"],
    )


@pytest.mark.parametrize("length", [1, 7, 32, 64, 100])
@pytest.mark.parametrize("with_init", [False, True])
def test_chunked_scan_matches_recurrence_fp64(length: int, with_init: bool) -> None:
    t = ssd_problem(2, length, 4, 8, 2, 16, dtype=torch.float64, with_z=True, with_init=with_init)
    t = {k: (v.double() if v is not None else None) for k, v in t.items()}
    y, final = _scan(t, chunk=32)
    y_ref, final_ref = _naive(t)
    assert y.shape == t["x"].shape and y.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)


def test_chunked_scan_fp32_matches_fp64_recurrence() -> None:
    t = ssd_problem(2, 100, 4, 8, 1, 16, with_init=True)
    y, final = _scan(t, chunk=32)
    y_ref, final_ref = _naive({k: (v.double() if v is not None else None) for k, v in t.items()})
    assert y.dtype == torch.float32
    assert max_rel_err(y, y_ref) < 1e-5
    assert max_rel_err(final, final_ref) < 1e-5


def test_chunk_size_does_not_change_result() -> None:
    t = ssd_problem(1, 50, 2, 8, 1, 16)
    y8 = _scan(t, chunk=8, final=False)
    y64 = _scan(t, chunk=64, final=False)
    assert max_rel_err(y8, y64) < 1e-5


def test_chunked_prefill_equals_one_shot() -> None:
    t = ssd_problem(2, 45, 4, 8, 2, 16, with_z=True)
    y_full, final_full = _scan(t, chunk=16)
    state = None
    pieces = []
    for lo, hi in [(0, 13), (13, 14), (14, 45)]:
        part = {k: (v[:, lo:hi] if k in ("x", "dt", "B", "C", "z") else v) for k, v in t.items()}
        part["initial_states"] = state
        y, state = _scan(part, chunk=16)
        pieces.append(y)
    assert max_rel_err(torch.cat(pieces, dim=1), y_full) < 1e-5
    assert max_rel_err(state, final_full) < 1e-5


def test_step_reproduces_scan() -> None:
    t = ssd_problem(2, 20, 4, 8, 2, 16, with_z=True, with_init=True)
    y_full, final_full = _scan(t, chunk=8)
    state = t["initial_states"].clone()
    ys = [
        ssd_step(state, t["x"][:, i], t["dt"][:, i], t["A"], t["B"][:, i], t["C"][:, i], D=t["D"], z=t["z"][:, i],
                 dt_bias=t["dt_bias"], dt_softplus=True)
        for i in range(20)
    ]
    torch.testing.assert_close(torch.stack(ys, dim=1), y_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, final_full, rtol=1e-5, atol=1e-5)


def test_scan_gradcheck_fp64() -> None:
    t = ssd_problem(1, 6, 2, 3, 1, 4, dtype=torch.float64, with_z=True, with_init=True)
    names = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"]
    inputs = tuple(t[k].double().requires_grad_() for k in names)

    def fn(*args):
        kw = dict(zip(names, args, strict=True))
        return ssd_chunk_scan(
            kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], chunk_size=4, D=kw["D"], z=kw["z"], dt_bias=kw["dt_bias"],
            dt_softplus=True, initial_states=kw["initial_states"], return_final_states=True,
        )

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_inconsistent_shapes_are_refused() -> None:
    t = ssd_problem(1, 4, 2, 3, 1, 4)
    with pytest.raises(ValueError, match="inconsistent SSD shapes"):
        ssd_chunk_scan(t["x"], t["dt"][:, :3], t["A"], t["B"], t["C"])
