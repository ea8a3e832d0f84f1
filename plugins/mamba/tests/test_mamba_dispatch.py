"""One dispatcher owns every op choice; the shared Triton helpers live in one module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from avgkit_mamba.norm import GatedRMSNorm
from avgkit_mamba.ops import dispatch

PKG = Path(dispatch.__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["mixer.py", "backbone.py"])
def test_model_code_never_chooses_an_implementation(module: str) -> None:
    tree = ast.parse((PKG / module).read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names} | {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "resolve_impl" not in names, f"{module} chooses an op itself; call a function of ops/dispatch.py"
    assert not [m for m in imported if "triton" in m], f"{module} imports a Triton module; go through ops/dispatch.py"


def test_jit_helpers_are_defined_once() -> None:
    defined: dict[str, list[str]] = {}
    for path in sorted((PKG / "ops").glob("triton_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and any(
                    "jit" in ast.unparse(d) for d in node.decorator_list) and "kernel" not in node.name:
                defined.setdefault(node.name, []).append(path.name)
    twice = {k: v for k, v in defined.items() if len(v) > 1}
    assert not twice, f"jit helpers defined in several modules: {twice}; keep them in triton_common.py"
    assert {"_softplus", "_conv_window", "_quantize_rows"} <= {k for k, v in defined.items() if v == ["triton_common.py"]}


def test_decode_step_torch_is_the_fused_step_then_the_mixer_norm() -> None:
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    b, h, p, g, n, w = 2, 4, 8, 2, 16, 4
    d_inner, conv_dim = h * p, h * p + 2 * g * n
    weight, bias, A_log, D, dt_bias = r(conv_dim, w), r(conv_dim), torch.rand(h, generator=gen), r(h), r(h)
    norm = GatedRMSNorm(d_inner, group_size=d_inner // g)
    conv, ssm = r(b, conv_dim, w), r(b, h, p, n)
    conv2, ssm2 = conv.clone(), ssm.clone()
    zxbcdt = r(b, d_inner + conv_dim + h)
    with torch.no_grad():
        out = dispatch.decode_step(zxbcdt, conv, weight, bias, ssm, A_log, D, dt_bias, norm.weight, norm.eps, p, g,
                                   impl="torch")
        z, xbc, dt = zxbcdt.split([d_inner, conv_dim, h], -1)
        ref = norm(dispatch.fused_step_torch(xbc, dt, conv2, weight, bias, ssm2, -torch.exp(A_log), D, dt_bias, z, p,
                                             g))
    assert torch.equal(out, ref) and torch.equal(ssm, ssm2) and torch.equal(conv, conv2)
    with pytest.raises(ValueError, match="expected"):
        dispatch.decode_step(zxbcdt[:, 1:], conv, weight, bias, ssm, A_log, D, dt_bias, norm.weight, norm.eps, p, g,
                             impl="torch")


def test_step_kernel_option_reaches_the_mixers_and_is_checked() -> None:
    from avgkit_mamba.mixer import Mamba2Mixer

    from avgkit.errors import AvgkitError
    from avgkit.plugins import get_registry

    spec = get_registry().get("backbone", "mamba2")
    bb = spec.factory(spec.resolve("tiny", {"vocab_size": 16, "num_tokens": 4, "step_kernel": "one-launch"}))
    assert {blk.mixer.step_kernel for blk in bb.layers} == {"one-launch"}
    with pytest.raises(ValueError, match="unknown decode step kernel 'fast'"):
        Mamba2Mixer(32, d_state=16, headdim=8, step_kernel="fast")
    with pytest.raises(AvgkitError, match="use one of two-launch, one-launch"):
        dispatch.decode_step(torch.zeros(1, 1), None, None, None, torch.zeros(1, 1, 1, 1), None, None, None, None,
                             1e-5, 1, 1, impl="torch", kernel="fast")


def test_short_problems_run_the_pinned_config_on_a_gpu(monkeypatch) -> None:
    """A prefill of a few tokens is not autotuned (cold-start compile time); training-length problems are."""
    pytest.importorskip("triton")
    from avgkit_mamba.ops import triton_launch

    monkeypatch.setattr(triton_launch, "INTERPRET", False)
    tuned = triton_launch.Launcher(None, configs=[], key=[], valid=lambda a, m: True, interp=lambda a: {})
    fixed = triton_launch.Launcher(None, configs=[], key=[], valid=lambda a, m: True, interp=lambda a: {},
                                   autotune=False)
    short, full = triton_launch.PIN_BELOW_TOKENS - 1, triton_launch.PIN_BELOW_TOKENS
    assert tuned.pinned({"seqlen": 1}) and tuned.pinned({"seqlen": short})
    assert not tuned.pinned({"seqlen": full}) and not tuned.pinned({"seqlen": 256}) and not tuned.pinned({})
    assert fixed.pinned({"seqlen": 256})
    monkeypatch.setattr(triton_launch, "INTERPRET", True)
    assert tuned.pinned({"seqlen": 256})


@pytest.mark.parametrize("rows", [32 * 24, 128 * 24, 512 * 24])
def test_decode_tile_rules_give_launch_sizes_on_a_gpu(rows: int) -> None:
    """The GPU branch of each decode kernel's tile rule, which the interpreter never takes: a program's head dims
    and warps as powers of two (the chunked form once unpacked the recurrent rule's tuple wrongly)."""
    pytest.importorskip("triton")
    from avgkit_mamba.ops import triton_step, triton_window

    for quant in (False, True):
        tile = triton_step._tile(rows, 64, quant)
        assert isinstance(tile, triton_step.StepTile) and tile.block_p <= 64 and tile.heads >= 1 and tile.stages >= 1
    for quant in (False, True):
        tile = triton_window.window_tile(rows, 64, quant, interpret=False)
        assert tile.block_p in (16, 32, 64) and tile.num_warps in (1, 2, 4, 8, 16)
        with triton_step.split_rule(lambda r, p, q: triton_step.StepTile(16, 4, max_registers=40)):
            assert triton_window.window_tile(rows, 64, quant, interpret=False) == triton_step.StepTile(16, 4, max_registers=40)


def test_step_tile_specs_read_back_and_name_their_format() -> None:
    """``StepTile.parse``, which benchmarks/sampling.py and step_resources.py read their splits with."""
    pytest.importorskip("triton")
    from avgkit_mamba.ops.triton_step import StepTile

    assert StepTile.parse("32x8") == StepTile(32, 8)
    assert StepTile.parse(" 64x8:pc:r64 ") == StepTile(64, 8, preconv=True, max_registers=64)
    assert StepTile.parse("16x8:stream:h4:s3") == StepTile(16, 8, 4, True, 3)
    assert StepTile.parse("32x8:pc:dn") == StepTile(32, 8, preconv=True, defer_norm=True)
    assert StepTile.parse("32x4:pc:dn:r64:w") == StepTile(32, 4, preconv=True, max_registers=64, defer_norm=True,
                                                          words=True)
    for bad, words in (("32by8", "BLOCK_PxWARPS"), ("32x8:rx", "BLOCK_PxWARPS"), ("32x8:fast", "unknown flag")):
        with pytest.raises(ValueError, match=words):
            StepTile.parse(bad)


def test_programmatic_launch_switch_sets_the_decode_kernels_launch_option() -> None:
    """``programmatic_launch`` turns the decode kernels' programmatic dependent launch on and back off (never under
    the interpreter, whose kernels cannot wait on a grid)."""
    pytest.importorskip("triton")
    from avgkit_mamba.ops import triton_launch

    assert not triton_launch.use_pdl() and triton_launch.pdl_options() == {}
    with triton_launch.programmatic_launch(True):
        on = triton_launch.HAS_PDL and not triton_launch.INTERPRET
        assert triton_launch.use_pdl() == on
        assert triton_launch.pdl_options() == ({"launch_pdl": True} if on else {})
        with triton_launch.programmatic_launch(False):
            assert not triton_launch.use_pdl()
        assert triton_launch.use_pdl() == on
    assert not triton_launch.use_pdl()
