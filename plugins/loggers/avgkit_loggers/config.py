"""Options of the loggers (no torch, no tensorboard, no wandb: read at registration)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from avgkit.loggers import LoggerConfig


class TensorBoardConfig(LoggerConfig):
    log_dir: str = Field("tensorboard", description="event-file folder (relative paths: to the run directory)")
    flush_secs: int = Field(30, ge=1, description="seconds between flushes to disk")


class WandbConfig(LoggerConfig):
    project: str = Field("avgkit", description="wandb project")
    entity: str | None = Field(None, description="wandb user or team (default: yours)")
    name: str | None = Field(None, description="run name (default: the recipe's name)")
    group: str | None = Field(None, description="run group, e.g. a sweep's name")
    tags: list[str] = Field(default_factory=list, description="run tags")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="online, offline (synced later with `wandb sync`) or disabled; default: wandb's (WANDB_MODE)"
    )
    dir: str | None = Field(None, description="where wandb writes its files (default: the run directory)")
