"""Shared benchmark plumbing: environment record, device ceilings, timing, JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator
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


@contextlib.contextmanager
def settings(values: Iterable[tuple[Any, str, Any]]) -> Iterator[None]:
    """Each ``(module, name, value)`` set for the block (a kernel switch or launch setting), the previous values
    set back after it, whatever happens inside."""
    values = list(values)
    before = [(m, name, getattr(m, name)) for m, name, _ in values]
    try:
        for m, name, value in values:
            setattr(m, name, value)
        yield
    finally:
        for m, name, value in reversed(before):
            setattr(m, name, value)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| relative to the largest |b| (in fp32; a zero ``b`` counts as 1e-30)."""
    b = b.float()
    return float((a.float() - b).abs().max() / b.abs().max().clamp_min(1e-30))


def write_result(name: str, data: dict[str, Any], out: str | None = None, quiet: bool = False) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"environment": environment(), **data}, indent=2, default=str))
    tmp.replace(path)
    if not quiet:
        print(f"wrote {path}")
    return path


# --------------------------------------------------------------------------- smoke runs
# ``--smoke`` runs a benchmark's own measurement code on the CPU at tiny sizes, so the test
# suite notices when a script stops running; its numbers mean nothing. The helpers below
# let the same code time and measure on either device.


def add_smoke_flag(parser: Any) -> None:
    """``--smoke``: tiny sizes on the CPU (checks the script still runs; numbers mean nothing)."""
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes on the CPU: checks that the script runs (its numbers mean nothing)")


def device_for(smoke: bool, script: str | None = None) -> torch.device:
    """The device a benchmark measures on: the GPU, or the CPU in a smoke run. With ``script`` named, a run that is
    not a smoke run on a machine without a GPU exits 2 with a one-line message instead."""
    if script and not smoke and not torch.cuda.is_available():
        print(f"{script} benchmark needs a CUDA GPU; none is visible (--smoke runs it on the CPU)", file=sys.stderr)
        raise SystemExit(2)
    return torch.device("cpu" if smoke else "cuda")


def smoke_out(name: str, out: str | Path | None, smoke: bool) -> str | Path | None:
    """``out`` unchanged, except that a smoke run without one writes to the temp dir, never to results/."""
    if out is not None or not smoke:
        return out
    import tempfile

    return Path(tempfile.gettempdir()) / "avgkit-benchmark-smoke" / f"{name}.json"


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_on(device: torch.device | str, fn: Callable[[], Any], repeats: int = 3) -> tuple[float, list[float]]:
    """``timed`` on any device: median wall time of ``fn`` (synchronised on a GPU), and all times."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def median_ms(device: torch.device | str, fn: Callable[[], Any], warmup: int, reps: int) -> float:
    """Median milliseconds of ``fn`` after ``warmup`` calls: CUDA events on a GPU, wall time on the CPU."""
    for _ in range(warmup):
        fn()
    cuda = torch.device(device).type == "cuda"
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def graph_ms(fn: Callable[[], Any], device: torch.device, warmup: int, reps: int) -> float:
    """Median ms of ``fn`` replayed from a CUDA graph captured after one eager call (eager on the CPU)."""
    if device.type != "cuda":
        return median_ms(device, fn, warmup, reps)
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_ms(device, graph.replay, warmup, reps)


def reset_peak_memory(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device | str) -> float | None:
    """Peak allocated GiB since ``reset_peak_memory`` on a GPU; None on the CPU (not tracked)."""
    if torch.device(device).type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def allocated_gib(device: torch.device | str) -> float | None:
    """GiB allocated now on a GPU (what earlier rows of the process still hold); None on the CPU."""
    if torch.device(device).type != "cuda":
        return None
    return round(torch.cuda.memory_allocated(device) / 2**30, 2)


def empty_cache(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# conditioner of each AiM preset in the sampling benchmarks (``tiny``: smoke runs)
AIM_CONDITIONERS: dict[str, tuple[str, dict[str, Any]]] = {
    "aim-b": ("adaln", {}), "aim-l": ("adaln-group", {"groups": 4}), "aim-xl": ("adaln-group", {"groups": 4}),
    "tiny": ("adaln-group", {"groups": 2})}


def state_label(backbone: Any) -> str:
    """The dtype a backbone's decoding state gets (``state_dtype: auto`` resolved, as ``decode_settings`` reports
    it): ``int8``, ``bf16``, ``fp16``, ``fp32``."""
    dtype = backbone.decode_settings()["state_dtype"]
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)


def build_sampling_aim(preset: str, *, device: torch.device | str = "cuda", vocab: int = 16384, tokens: int = 256,
                       classes: int = 1000, state_dtype: str = "auto", impl: str = "auto",
                       decode_form: str | None = None, step_kernel: str | None = None) -> tuple[Any, Any]:
    """(backbone, conditioner) of an AiM preset with random weights, bf16, eval mode, on ``device``; the decoding
    state as configured (``auto``, the recipe's default: int8 for this bf16 model), the decoding layout and the
    step kernel too (``None``: the recipe's default).

    The adaLN weights are drawn non-zero so that modulation is exercised like a trained model.
    """
    from avgkit.plugins import get_registry

    reg = get_registry()
    spec = reg.get("backbone", "mamba2")
    cfg = spec.resolve(preset, {"vocab_size": vocab, "num_tokens": tokens, "state_dtype": state_dtype, "impl": impl,
                                **({} if decode_form is None else {"decode_form": decode_form}),
                                **({} if step_kernel is None else {"step_kernel": step_kernel})})
    torch.manual_seed(0)
    backbone = spec.factory(cfg)
    cname, opts = AIM_CONDITIONERS[preset]
    cspec = reg.get("conditioner", cname)
    cond = cspec.factory(cspec.resolve(None, {"num_classes": classes, **opts}), dim=backbone.dim,
                         num_layers=backbone.num_layers)
    with torch.no_grad():
        for p in cond.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.02)
    return backbone.to(device).bfloat16().eval(), cond.to(device).bfloat16().eval()
