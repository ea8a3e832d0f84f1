"""The ``tensorboard`` logger: scalars and sample grids as TensorBoard event files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avgkit.errors import AvgkitError
from avgkit_loggers.config import TensorBoardConfig
from avgkit_loggers.images import read_png


def summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise AvgkitError(
            f"the tensorboard logger needs the tensorboard package ({err}); pip install 'avgkit-loggers[tensorboard]' "
            f"or remove tensorboard from the recipe's loggers"
        ) from None
    return SummaryWriter


class TensorBoardLogger:
    def __init__(self, config: TensorBoardConfig, *, run_dir: Path, recipe: Any = None) -> None:
        log_dir = Path(config.log_dir)
        self.log_dir = log_dir if log_dir.is_absolute() else Path(run_dir) / log_dir
        self.writer = summary_writer_class()(log_dir=str(self.log_dir), flush_secs=config.flush_secs)
        if recipe is not None:  # the resolved recipe, readable in TensorBoard's text tab
            self.writer.add_text("recipe", "```\n" + recipe.to_yaml() + "\n```", 0)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def log_images(self, step: int, images: Mapping[str, Path]) -> None:
        for tag, path in images.items():
            self.writer.add_image(tag, read_png(path), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
