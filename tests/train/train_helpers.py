"""Plain helpers for the training-engine tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from avgkit.build import ARModel, build
from avgkit.recipe import TrainSection, validate_recipe

TOY = {
    "name": "toy",
    "tokenizer": "toy-patch",
    "backbone": {"name": "toy-gru", "dim": 16, "layers": 1},
    "conditioner": {"name": "toy-class", "num_classes": 10},
    "sampler": {"name": "ar", "cfg_scale": 2.0, "top_k": 5},
}


def toy_recipe(**sections: Any):
    raw = {**TOY, **sections}
    return validate_recipe(raw)


def toy_model(registry, *, label_dropout: float = 0.1, seed: int = 0, **backbone: Any) -> ARModel:
    recipe = toy_recipe(
        backbone={**TOY["backbone"], **backbone},
        conditioner={"name": "toy-class", "num_classes": 10, "label_dropout": label_dropout},
    )
    torch.manual_seed(seed)
    comps = build(recipe, registry=registry)
    return ARModel(comps.backbone, comps.conditioner)


def random_codes(n: int = 64, tokens: int = 16, vocab: int = 16, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, tokens), generator=g), torch.randint(0, classes, (n,), generator=g)


def train_cfg(**kw: Any) -> TrainSection:
    base = dict(steps=6, batch_size=8, lr=1e-2, log_every=1, ckpt_every=1000, schedule="constant", grad_clip=1.0)
    base.update(kw)
    return TrainSection(**base)


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: installed plugins disabled, one thread each."""
    env = dict(os.environ)
    names = sorted({ep.name for ep in metadata.entry_points(group="avgkit")})
    env["AVGKIT_DISABLE_PLUGINS"] = ",".join(names)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    return env


def write_recipe(path: Path, **sections: Any) -> Path:
    path.write_text(yaml.safe_dump({**TOY, **sections}, sort_keys=False))
    return path


#: A child process running a recipe: ``driver.py RECIPE [--resume] [--delay SECONDS] [--pids DIR]``.
#: ``--delay`` sleeps after every step so that a test can kill it mid-run; ``--pids`` writes
#: ``DIR/<rank>.pid`` once training runs, so that a test can signal one process.
DRIVER = textwrap.dedent(
    """\
    import os, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from avgkit.recipe import load_recipe
    from avgkit.runtime.stop import Interrupted
    from avgkit.train.pipeline import run_recipe

    args = sys.argv[1:]
    delay = float(args[args.index("--delay") + 1]) if "--delay" in args else 0.0
    pids = Path(args[args.index("--pids") + 1]) if "--pids" in args else None

    def callback(step, record):
        if pids is not None and step == 1:
            (pids / f"{os.environ.get('RANK', '0')}.pid").write_text(str(os.getpid()))
        time.sleep(delay)

    try:
        run_recipe(load_recipe(args[0]), resume="--resume" in args, progress=True, callbacks=[callback])
    except Interrupted as err:
        print(err, file=sys.stderr, flush=True)
        sys.exit(err.exit_code)
    """
)
