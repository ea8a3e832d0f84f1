"""The ``wandb`` logger: a Weights & Biases run per avgkit run (resumed runs continue it)."""

from __future__ import annotations

import importlib
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avgkit.errors import AvgkitError
from avgkit_loggers.config import WandbConfig

#: the wandb run id of an avgkit run, kept in its run directory so that --resume continues it
ID_FILE = "wandb-run-id.txt"


def import_wandb() -> Any:
    try:
        return importlib.import_module("wandb")
    except ImportError as err:
        raise AvgkitError(
            f"the wandb logger needs the wandb package ({err}); pip install 'avgkit-loggers[wandb]' "
            f"or remove wandb from the recipe's loggers"
        ) from None


class WandbLogger:
    def __init__(self, config: WandbConfig, *, run_dir: Path, recipe: Any = None) -> None:
        self.wandb = import_wandb()
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file = run_dir / ID_FILE
        if not id_file.is_file():
            id_file.write_text(secrets.token_hex(8) + "\n")
        self.run = self.wandb.init(
            project=config.project,
            entity=config.entity,
            name=config.name or (recipe.name if recipe is not None else run_dir.name),
            group=config.group,
            tags=list(config.tags) or None,
            mode=config.mode,
            dir=str(Path(config.dir) if config.dir else run_dir),
            config=recipe.to_dict() if recipe is not None else None,
            id=id_file.read_text().strip(),
            resume="allow",
        )

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def log_images(self, step: int, images: Mapping[str, Path]) -> None:
        self.run.log({tag: self.wandb.Image(str(path)) for tag, path in images.items()}, step=step)

    def close(self) -> None:
        self.run.finish()
