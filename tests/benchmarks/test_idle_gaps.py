"""sampling.py's idle-time count between a step's kernels (its GPU profile reads it; no GPU here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sampling.py"


@pytest.fixture(scope="module")
def sampling():
    spec = importlib.util.spec_from_file_location("sampling_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_idle_is_counted_between_kernels_by_pair_and_waits_of_the_host_are_left_out(sampling):
    spans = [("b", 6, 10), ("a", 0, 5), ("a", 12, 20), ("b", 20.5, 30), ("c", 400, 401)]  # unsorted on purpose
    got = sampling.idle_gaps(spans, steps=2)
    assert got["idle_ms_per_step"] == pytest.approx(3.5 / 1e3 / 2, abs=1e-4)  # 1 + 2 + 0.5 us; 370 us left out
    first = got["by_pair"][0]
    assert (first["after"], first["before"], first["mean_us"]) == ("b", "a", 2.0)
    assert {(r["after"], r["before"]): r["calls_per_step"] for r in got["by_pair"]} == {("b", "a"): 0.5,
                                                                                       ("a", "b"): 1.0}


def test_overlapping_kernels_leave_no_idle_time(sampling):
    got = sampling.idle_gaps([("a", 0, 10), ("b", 2, 4), ("c", 10, 12)], steps=1)
    assert got["idle_ms_per_step"] == 0 and got["by_pair"] == []
