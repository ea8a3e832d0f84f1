"""Shared benchmark plumbing: environment record, device ceilings, timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def environment() -> dict[str, Any]:
    """GPU, driver and package versions, recorded with every result."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = out.stdout.strip().splitlines()[0]
        except Exception:
            info["driver"] = None
    try:
        import mamba_ssm

        info["mamba_ssm"] = mamba_ssm.__version__
    except Exception:
        info["mamba_ssm"] = None
    return info


def import_mamba_ssm() -> Any | None:
    """mamba-ssm where installed, without its compiled Mamba-1 extension (not needed for Mamba-2)."""
    if "selective_scan_cuda" not in sys.modules:
        try:
            import selective_scan_cuda  # noqa: F401
        except ImportError:
            sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
    try:
        import mamba_ssm

        return mamba_ssm
    except Exception as err:
        print(f"mamba-ssm not available: {type(err).__name__}: {err}", file=sys.stderr)
        return None


def copy_bandwidth(gib: float = 2.0) -> float:
    """Device copy bandwidth in bytes/s, counting read + write (the memory-floor ceiling)."""
    n = int(gib * 2**30) // 4
    a = torch.empty(n, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    return 2 * n * 4 / statistics.median(times)


def timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` (synchronised), and all times."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def write_result(name: str, data: dict[str, Any], out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"environment": environment(), **data}, indent=2, default=str))
    tmp.replace(path)
    print(f"wrote {path}")
    return path
