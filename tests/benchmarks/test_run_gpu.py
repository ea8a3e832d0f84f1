"""benchmarks/run_gpu.sh on a machine without a GPU: its help, its modes, and a clear refusal."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "run_gpu.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_help_names_every_mode_the_script_handles() -> None:
    done = _run("--help")
    assert done.returncode == 0, done.stderr
    handled = set(re.findall(r'if \[ "\$QUICK" = "(--[a-z0-9-]+)" \]', SCRIPT.read_text()))
    usage = next(line for line in done.stdout.splitlines() if "bash benchmarks/run_gpu.sh [" in line)
    assert handled and handled == set(re.findall(r"--[a-z0-9-]+", usage)), (handled, usage)
    for mode in handled:  # and each has its paragraph
        assert re.search(rf"^{mode} \(", done.stdout, re.MULTILINE), mode


def test_unknown_mode_and_missing_gpu_are_refused_in_one_line() -> None:
    done = _run("--hlep")
    assert done.returncode == 2 and "unknown mode --hlep" in done.stderr and "--help" in done.stderr
    if shutil.which("nvidia-smi") is None:
        done = _run("--pdl")
        assert done.returncode == 2 and "NVIDIA GPU" in done.stderr
