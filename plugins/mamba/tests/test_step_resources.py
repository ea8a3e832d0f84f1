"""The decode state update compiled for sm_90 on the CPU: the report runs, and the rule's splits stay lean."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    triton = pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the Triton interpreter replaces the kernels this compiles")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").is_file():
        pytest.skip("this Triton has no bundled ptxas")
    sys.path.insert(0, str(SCRIPTS))
    try:
        import step_resources
    finally:
        sys.path.remove(str(SCRIPTS))
    out = tmp_path_factory.mktemp("resources") / "report.json"
    assert step_resources.main(["--splits", "rule,32x8:h2:s2,32x4:pc:dn:r64", "--states", "bf16,int8",
                                "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_every_split_is_compiled_and_measured(report: dict) -> None:
    rows = {(r["state"], r["split"]): r for r in report["rows"]}
    assert set(rows) == {(s, sp) for s in ("bf16", "int8") for sp in ("rule", "32x8:h2:s2", "32x4:pc:dn:r64")}
    for r in rows.values():
        assert r["registers"] > 0 and 1 <= r["programs_per_sm"] <= 64 // r["num_warps"], r
        assert 0 < r["instructions"] < 4000 and r["instructions_per_value"] > 0, r
    # the pipelined loop stages its tiles through shared memory; the one-head rule loads them directly
    assert all(rows[(s, "32x8:h2:s2")]["async_copies"] > 0 for s in ("bf16", "int8"))
    assert all(rows[(s, "rule")]["async_copies"] == 0 and rows[(s, "rule")]["rule"] for s in ("bf16", "int8"))


def test_the_bf16_rule_neither_spills_nor_moves_its_tile(report: dict) -> None:
    """The default split (a bf16 state): no spilled registers, no whole-tile round trip through shared memory,
    at least four programs an SM (what the H100 measurements of docs/benchmarks.md ran)."""
    rule = next(r for r in report["rows"] if r["state"] == "bf16" and r["split"] == "rule")
    assert rule["spilled_bytes"] == 0 and rule["tile_layout_conversions"] == 0, rule
    assert rule["programs_per_sm"] >= 4, rule


def test_the_int8_rule_reads_its_state_as_words_with_fewer_instructions_a_value(report: dict) -> None:
    """The int8 update bound by issue (docs/benchmarks.md): the rule reads and writes the state as words and
    updates it in the scaled domain (``StepTile.words``), with fewer instructions a state value than the same
    split bytewise, as many programs an SM, no spill, and byte permutations that assemble (inline PTX, which the
    interpreter checks never run)."""
    rows = {(r["state"], r["split"]): r for r in report["rows"]}
    rule, bytewise = rows[("int8", "rule")], rows[("int8", "32x4:pc:dn:r64")]
    assert rule["words"] and not bytewise["words"]
    assert (rule["block_p"], rule["num_warps"], rule["max_registers"], rule["preconv"], rule["defer_norm"]) == \
        (bytewise["block_p"], bytewise["num_warps"], bytewise["max_registers"], bytewise["preconv"],
         bytewise["defer_norm"]), (rule, bytewise)
    assert rule["instructions_per_value"] < bytewise["instructions_per_value"], (rule, bytewise)
    assert rule["programs_per_sm"] == bytewise["programs_per_sm"] and rule["spilled_bytes"] == 0, (rule, bytewise)
