"""A test plugin: a tokenizer with a weights file and a registered tokenizer trainer."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file

from avgkit import hookimpl
from avgkit.registry import ComponentConfig
from avgkit.testing.toys import ToyPatchConfig, ToyPatchTokenizer

AVGKIT_API_VERSION = "1.0"
TRAIN_CALLS: list[dict] = []


class FakeVQConfig(ToyPatchConfig):
    weights: str | None = None


class FakeVQTrainConfig(ComponentConfig):
    epochs: int = Field(1, ge=1)


class FakeVQ(ToyPatchTokenizer):
    def __init__(self, config: FakeVQConfig) -> None:
        super().__init__(config)
        self.register_buffer("mean", load_file(config.weights)["mean"] if config.weights else torch.zeros(()))


def train_fake_vq(tok_cfg, train_cfg, images, out_dir, *, eval_images=None, resume=True, progress=True) -> Path:
    out = Path(out_dir)
    done = out / "fake-vq.safetensors"
    if resume and done.is_file():  # a finished run in out_dir is reused, as a real trainer does
        return done
    TRAIN_CALLS.append(
        {"n": len(images), "eval": None if eval_images is None else len(eval_images), "epochs": train_cfg.epochs}
    )
    out.mkdir(parents=True, exist_ok=True)
    save_file({"mean": (images.mean() * train_cfg.epochs).reshape(())}, str(done))
    return done


@hookimpl
def avgkit_register_tokenizers(register):
    register("fake-vq", FakeVQ, config=FakeVQConfig)


@hookimpl
def avgkit_register_tokenizer_trainers(register):
    register("fake-vq", train_fake_vq, config=FakeVQTrainConfig)
