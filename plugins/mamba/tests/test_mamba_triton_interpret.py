"""Triton SSD kernels on the CPU interpreter (each group in its own process).

``TRITON_INTERPRET=1`` must be set before Triton is imported, which the pytest process
may already have done, so ``mamba_interpret_checks.py`` runs in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

TESTS = Path(__file__).resolve().parent
PLUGIN_ROOT = TESTS.parent


@pytest.mark.parametrize("group", ["scan", "step", "decode", "compile", "int8", "fused", "poison", "conv", "core", "inproj"])
def test_triton_kernels_under_interpreter(group: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), str(PLUGIN_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(TESTS / "mamba_interpret_checks.py"), group],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")
