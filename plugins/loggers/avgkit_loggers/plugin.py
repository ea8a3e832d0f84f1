"""avgkit hook implementations: the ``tensorboard`` and ``wandb`` metric loggers."""

from __future__ import annotations

from avgkit import hookimpl

AVGKIT_API_VERSION = "1.1"


@hookimpl
def avgkit_register_metric_loggers(register):
    from avgkit_loggers.config import TensorBoardConfig, WandbConfig  # plain pydantic: cheap

    register("tensorboard", "avgkit_loggers.tensorboard:TensorBoardLogger", config=TensorBoardConfig,
             description="TensorBoard event files in the run directory (extra: avgkit-loggers[tensorboard])")
    register("wandb", "avgkit_loggers.wandb_logger:WandbLogger", config=WandbConfig,
             description="Weights & Biases run, online or offline (extra: avgkit-loggers[wandb])")
