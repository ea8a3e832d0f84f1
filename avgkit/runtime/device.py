"""Which device and which precision: one answer for training, sampling, evaluation and plugins."""

from __future__ import annotations

import contextlib

import torch

from avgkit.errors import AvgkitError

#: Precisions a caller may ask for; ``auto`` is bf16 on CUDA and fp32 elsewhere.
PRECISIONS = ("fp32", "bf16")


def resolve_device(preference: str | torch.device | None = "auto", *, local_rank: int | None = None,
                   option: str = "device") -> torch.device:
    """``auto`` (or ``None``): this process's CUDA device when one is visible, else the CPU.

    ``local_rank`` picks the GPU of a ``torchrun`` rank (also for a bare ``cuda``);
    ``option`` names the setting in error messages (``train.device``, ``--device``).
    """
    if preference is None or str(preference) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        index = torch.cuda.current_device() if local_rank is None else local_rank % torch.cuda.device_count()
        return torch.device("cuda", index)
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise AvgkitError(f"{option} {str(preference)!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AvgkitError(f"{option} {str(preference)!r} asks for CUDA but no GPU is visible; use auto or cpu")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def check_precision(precision: str, *, allow_auto: bool = False) -> str:
    allowed = (*PRECISIONS, "auto") if allow_auto else PRECISIONS
    if precision not in allowed:
        raise AvgkitError(f"precision {precision!r} is not supported; use {' or '.join(allowed)}")
    return precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or ``None`` for fp32."""
    check_precision(precision, allow_auto=True)
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None, *, cache: bool = True) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype``, or nothing for ``None``; ``cache=False`` where a CUDA graph records the casts."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def active_autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The dtype autocast casts to on ``device``'s type right now, or None (off, or a type it has none for: meta)."""
    kind = torch.device(device).type
    try:
        return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
    except RuntimeError:  # a device type without autocast
        return None


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    return autocast(device, autocast_dtype(precision, device))
