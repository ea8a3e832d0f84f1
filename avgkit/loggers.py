"""Metric loggers: where training reports its numbers and sample grids.

A run always writes ``metrics.jsonl`` (the run's own record: resume, ``avgkit
compare`` and ``loss.png`` read it). The recipe's ``loggers:`` list adds trackers
that receive the same records: TensorBoard and Weights & Biases come with the
``avgkit-loggers`` plugin, and any plugin can add one through the
``avgkit_register_metric_loggers`` hook. The built-in ``jsonl`` logger writes the
records to another JSONL file (a shared folder, say).

Only the main process logs. Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import Field

from avgkit.errors import AvgkitError
from avgkit.registry import ComponentConfig


@runtime_checkable
class MetricLogger(Protocol):
    """What a logger factory ``factory(config, *, run_dir, recipe)`` returns.

    ``log_metrics`` receives, every ``train.log_every`` steps, the record that
    ``metrics.jsonl`` gets: ``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``
    (throughput), ``elapsed``, ``epoch``; after training, the final evaluation's numbers
    under ``eval/``. ``log_images`` receives PNG files (the periodic sample grids
    ``samples/step-*.png`` and the final ``samples.png``) by name. ``close`` is called
    once, at the end.
    """

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def log_images(self, step: int, images: Mapping[str, Path]) -> None: ...

    def close(self) -> None: ...


class LoggerConfig(ComponentConfig):
    """Base of every logger's options."""


class JsonlLoggerConfig(LoggerConfig):
    path: str = Field(description="JSONL file the records are appended to (relative paths: to the run directory)")


class JsonlLogger:
    """Appends each record (and each image's path) as one JSON line."""

    def __init__(self, config: JsonlLoggerConfig, *, run_dir: Path, recipe: Any = None) -> None:
        path = Path(config.path)
        self.path = path if path.is_absolute() else Path(run_dir) / path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._write({**metrics, "step": step})

    def log_images(self, step: int, images: Mapping[str, Path]) -> None:
        self._write({"step": step, "images": {k: str(v) for k, v in images.items()}})

    def close(self) -> None:
        pass


def numeric(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``record`` (``step`` left out), keys prefixed."""
    return {
        f"{prefix}{k}": float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


class MetricLoggers:
    """The recipe's loggers as one: each call goes to every logger, whose errors name it."""

    def __init__(self, loggers: Sequence[tuple[str, MetricLogger]]) -> None:
        self.loggers = list(loggers)
        self.closed = False

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def _each(self, what: str, *args: Any) -> None:
        for name, logger in self.loggers:
            try:
                getattr(logger, what)(*args)
            except AvgkitError:
                raise
            except Exception as err:
                raise AvgkitError(f"metric logger {name!r} failed in {what}: {type(err).__name__}: {err}") from err

    def log_metrics(self, step: int, record: Mapping[str, Any], prefix: str = "") -> None:
        values = numeric(record, prefix)
        if values:
            self._each("log_metrics", step, values)

    def log_images(self, step: int, images: Mapping[str, Path | None]) -> None:
        found = {k: Path(v) for k, v in images.items() if v is not None and Path(v).is_file()}
        if found:
            self._each("log_images", step, found)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._each("close")


def check_loggers(recipe: Any, registry: Any) -> None:
    """Each of the recipe's loggers is registered and its options valid (nothing is opened)."""
    for ref in recipe.loggers:
        registry.get("metric_logger", ref.name).resolve(ref.preset, ref.options)


def open_loggers(recipe: Any, run_dir: Path, registry: Any = None) -> MetricLoggers:
    """Build the recipe's ``loggers`` for ``run_dir`` (call on the main process only)."""
    if registry is None:
        from avgkit.plugins import get_registry

        registry = get_registry()
    built = []
    for ref in recipe.loggers:
        spec = registry.get("metric_logger", ref.name)
        config = spec.resolve(ref.preset, ref.options)
        logger = spec.factory(config, run_dir=Path(run_dir), recipe=recipe)
        if not isinstance(logger, MetricLogger):
            raise AvgkitError(f"metric logger {ref.name!r} (plugin {spec.plugin!r}) built a {type(logger).__name__} "
                              f"without log_metrics, log_images and close")
        built.append((ref.name, logger))
    return MetricLoggers(built)
