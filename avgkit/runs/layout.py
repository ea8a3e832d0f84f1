"""Names of everything in a run directory and in a checkpoint, in one place.

A training run (``avgkit train``)::

    recipe.yaml               the resolved recipe (recipe.previous-N.yaml: earlier ones)
    plugins.json              installed plugins and versions
    inputs.json               content hashes of what the run was made from (avgkit.runs.inputs)
    captions.json             a text-conditioned run's caption table: caption id -> caption (avgkit.runs.captions)
    tokenizer.safetensors     the run's own copy of its tokenizer weights
    metrics.jsonl             one JSON record per logged step
    loss.png                  loss curve
    samples/step-XXXXXX.png   periodic sample grids
    samples.png, eval.json    final samples and scores (samples-<weights>.png for the other weights)
    .lock                     the one writer's lock (avgkit.runs.lock)
    checkpoints/step-XXXXXX/  model / ema / optimizer .safetensors, trainer.json, COMPLETE last
                              (train.parallel=fsdp: shard-RRRRR-of-WWWWW.safetensors per rank,
                              shards.json, and model / ema .safetensors consolidated from them)

A converted checkpoint (``avgkit convert``) holds recipe.yaml, model.safetensors,
tokenizer.safetensors (optional) and convert.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RECIPE_FILE = "recipe.yaml"
PLUGINS_FILE = "plugins.json"
INPUTS_FILE = "inputs.json"
CAPTIONS_FILE = "captions.json"
TOKENIZER_FILE = "tokenizer.safetensors"
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
SAMPLES_DIR = "samples"
EVAL_FILE = "eval.json"
CONVERT_INFO_FILE = "convert.json"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"
#: written last into a checkpoint folder: only such checkpoints are read
COMPLETE_MARKER = "COMPLETE"
#: the index of a sharded checkpoint (world size, every tensor's shape and rows per rank)
SHARD_INDEX_FILE = "shards.json"


def shard_file(rank: int, world_size: int) -> str:
    """One rank's file of a sharded checkpoint: ``shard-00001-of-00002.safetensors``."""
    return f"shard-{rank:05d}-of-{world_size:05d}.safetensors"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def samples_png(weights: str | None = None) -> str:
    """The final sample grid: ``samples.png``, or ``samples-<weights>.png`` for the other weights."""
    return "samples.png" if weights is None else f"samples-{weights}.png"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def recipe(self) -> Path:
        return self.root / RECIPE_FILE

    @property
    def plugins(self) -> Path:
        return self.root / PLUGINS_FILE

    @property
    def inputs(self) -> Path:
        return self.root / INPUTS_FILE

    @property
    def captions(self) -> Path:
        return self.root / CAPTIONS_FILE

    @property
    def tokenizer(self) -> Path:
        return self.root / TOKENIZER_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def loss_plot(self) -> Path:
        return self.root / LOSS_PLOT

    @property
    def eval(self) -> Path:
        return self.root / EVAL_FILE

    @property
    def samples_dir(self) -> Path:
        return self.root / SAMPLES_DIR

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    def samples(self, weights: str | None = None) -> Path:
        return self.root / samples_png(weights)

    def step_samples(self, step: int) -> Path:
        return self.samples_dir / f"{step_dir_name(step)}.png"
