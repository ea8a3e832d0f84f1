"""Helpers shared by the conformance checks: building, perturbing, comparing."""

from __future__ import annotations

import copy
import dataclasses
import io
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar, cast

import torch
from torch import Tensor, nn

T = TypeVar("T")
M = TypeVar("M", bound=nn.Module)


class ConformanceSkip(Exception):
    """A check that does not apply here (no GPU, no modulation, ...); not a failure."""


def fail(message: str) -> NoReturn:
    raise AssertionError(message)


def as_factory(obj: object, kind: type[T]) -> Callable[..., T]:
    """A factory for ``obj``: itself if callable and not an instance of ``kind``, else deep copies."""
    if isinstance(obj, kind):
        return lambda *args, **kwargs: copy.deepcopy(obj)
    if not callable(obj):
        fail(f"expected a {kind.__name__} or a factory returning one, got {type(obj).__name__}")
    return cast("Callable[..., T]", obj)


def perturb(module: M, scale: float, seed: int) -> M:
    """Add ``N(0, scale)`` noise to every floating parameter, reproducibly.

    Many components start from zeros (heads, adaLN gates); checks on such a model
    would pass trivially, so every check perturbs the weights first.
    """
    if scale <= 0:
        return module
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point():
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * scale
                p.add_(noise.to(device=p.device, dtype=p.dtype))
    return module


def scale_of(reference: Tensor) -> float:
    return max(1.0, float(reference.detach().abs().max()))


def assert_close(actual: Tensor, expected: Tensor, what: str, atol: float) -> None:
    """``max|actual - expected| <= atol * max(1, max|expected|)``, with a message saying by how much."""
    if actual.shape != expected.shape:
        fail(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    scale = scale_of(expected)
    diff = float((actual.detach().float() - expected.detach().float()).abs().max()) if actual.numel() else 0.0
    if not diff <= atol * scale:  # also catches NaN
        fail(f"{what}: max |difference| {diff:.3g} exceeds {atol * scale:.3g} (atol {atol:g} x scale {scale:.3g})")


def assert_differ(a: Tensor, b: Tensor, what: str, atol: float) -> None:
    scale = scale_of(a)
    if float((a.detach().float() - b.detach().float()).abs().max()) <= atol * scale:
        fail(what)


def assert_finite(x: Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        fail(f"{what} contains NaN or infinity")


def tensors_in(obj: Any, depth: int = 0) -> Iterator[tuple[str, Tensor]]:
    """(path, tensor) for tensors reachable from ``obj`` through attributes and containers."""
    if depth > 4:
        return
    if isinstance(obj, Tensor):
        yield "", obj
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            for p, t in tensors_in(v, depth + 1):
                yield f"[{i}]{p}", t
    elif isinstance(obj, dict):
        for k, v in obj.items():
            for p, t in tensors_in(v, depth + 1):
                yield f"[{k!r}]{p}", t
    else:
        if hasattr(obj, "__dict__"):
            items = list(vars(obj).items())
        elif dataclasses.is_dataclass(obj):  # slotted dataclass
            items = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
        else:
            return
        for k, v in items:
            if isinstance(v, nn.Module):
                continue
            for p, t in tensors_in(v, depth + 1):
                yield f".{k}{p}", t


def weights_only_roundtrip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``torch.save`` then ``torch.load(weights_only=True)``: fails on pickled non-tensor state."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    try:
        return torch.load(buf, weights_only=True)
    except Exception as err:  # the safe loader refuses objects it would have to unpickle
        fail(f"state_dict does not load with torch.load(weights_only=True): {type(err).__name__}: {err}")
        raise


def grads_missing(modules: dict[str, nn.Module]) -> list[str]:
    """Names of trainable parameters whose gradient is missing, all zero or not finite."""
    bad = []
    for prefix, module in modules.items():
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if p.grad is None:
                bad.append(f"{prefix}.{name} (no grad)")
            elif not torch.isfinite(p.grad).all():
                bad.append(f"{prefix}.{name} (non-finite grad)")
            elif not p.grad.abs().sum() > 0:
                bad.append(f"{prefix}.{name} (zero grad)")
    return bad


def short_list(items: list[str], limit: int = 6) -> str:
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def cuda_available() -> bool:
    return torch.cuda.is_available()
