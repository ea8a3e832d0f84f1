"""``avgkit eval RUN``: score a training run's checkpoint the way the end of ``avgkit train`` does.

The run's recipe says how (``eval.classifier``, ``eval.samples_per_class``, ``eval.seed``,
the sampler and its CFG); any of them can be overridden. Every set of weights of the
checkpoint (EMA and raw when the run kept an EMA) is sampled and scored, and the same
``eval.json`` and ``samples.png`` as training's are written, into the run folder or
another one.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path
from typing import Any

from avgkit.errors import AvgkitError
from avgkit.eval.scorers import CONDITIONED, get_scorer, run_conditions
from avgkit.runs.layout import RunDir


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_records(run_dir: Path, step: int) -> list[dict[str, Any]]:
    """The run's training records up to ``step`` (the checkpoint's losses)."""
    from avgkit.train.report import read_metrics

    return [r for r in read_metrics(RunDir(run_dir).metrics) if r.get("step", 0) <= step and "loss" in r]


def _class_names(inputs: dict[str, Any] | None) -> list[str]:
    """The class names of the run's code store, when it is still there (they name the grid's rows)."""
    from avgkit.data.store import CodeStore, StoreError

    path = ((inputs or {}).get("code_store") or {}).get("path")
    if not path or not (Path(path) / "zarr.json").is_file():
        return []
    try:
        return list(CodeStore.open(path, verify=False).meta.class_names)
    except StoreError:
        return []


def score_run(
    path: str | Path,
    *,
    out: str | Path | None = None,
    classifier: str | None = None,
    per_class: int | None = None,
    cfg: float | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    step: int | None = None,
    device: str | None = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Sample and score run ``path`` (its latest checkpoint, or ``step``); returns the ``eval.json`` record.

    ``out`` (default: the run folder) gets ``eval.json`` and ``samples.png``; an
    ``eval.json`` already there is kept unless ``overwrite``. ``classifier``,
    ``per_class``, ``cfg``, ``seed`` and ``batch_size`` replace the recipe's
    ``eval.classifier``, ``eval.samples_per_class``, sampler ``cfg_scale``, ``eval.seed``
    and ``eval.batch_size``.
    """
    from avgkit.build import ARModel
    from avgkit.data.captions import CaptionTable, takes_captions
    from avgkit.plugins import get_registry
    from avgkit.runs.captions import read_captions
    from avgkit.runs.checkpoint import MARKER
    from avgkit.runs.inputs import read_inputs
    from avgkit.runs.loading import load_checkpoint, load_strict, read_weights, resolve_checkpoint
    from avgkit.runs.lock import FolderLock
    from avgkit.runtime.device import resolve_device
    from avgkit.runtime.distributed import DistEnv
    from avgkit.train.loop import TrainResult
    from avgkit.train.pipeline import final_samples

    for name, value in (("--per-class", per_class), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise AvgkitError(f"{name} must be at least 1 (got {value})")
    ref = resolve_checkpoint(path, step)
    if ref.kind != "run":
        raise AvgkitError(f"{ref.root} is a converted checkpoint, not a training run; sample it with `avgkit sample` "
                          f"and score the samples with `avgkit eval SAMPLES -r REFERENCE`")
    run_dir = ref.root
    out_dir = Path(out) if out is not None else run_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise AvgkitError(f"--out {out_dir} is a file; pass a folder for the report")
    if RunDir(out_dir).eval.exists() and not overwrite:
        raise AvgkitError(f"{RunDir(out_dir).eval} already holds a report; pass --out for another folder, or "
                          f"--overwrite to replace it")
    env = DistEnv(device=resolve_device(device, option="--device"))
    loaded = load_checkpoint(run_dir, device=env.device, ema=False, step=ref.step)
    recipe, comps = loaded.recipe, loaded.components
    name = recipe.eval.classifier if classifier is None else classifier
    scorer = get_scorer(name)
    if scorer is None:
        raise AvgkitError(f"run {run_dir} has eval.classifier=none: nothing to score it with; pass --classifier "
                          f"digits or --classifier text-digits")
    text = takes_captions(comps.conditioner)
    if scorer.conditions != run_conditions(text):
        raise AvgkitError(f"classifier {name} scores {CONDITIONED[scorer.conditions]} samples, but run {run_dir} is "
                          f"{CONDITIONED[run_conditions(text)]}; pass another --classifier")
    inputs = read_inputs(run_dir)
    described = ((inputs or {}).get("data_source") or {}).get("description")
    if described:
        scorer.check_data(described)
    sampler_ref = recipe.sampler
    if cfg is not None:  # the sampler's own config judges the scale
        spec = get_registry().get("sampler", sampler_ref.name)
        sampler_ref = sampler_ref.model_copy(update={"options": {**sampler_ref.options, "cfg_scale": cfg}})
        comps = dataclasses.replace(comps, sampler=spec.factory(spec.resolve(sampler_ref.preset, sampler_ref.options)))
    updates = {"classifier": name, "samples_per_class": per_class, "seed": seed, "batch_size": batch_size}
    ev = recipe.eval.model_copy(update={k: v for k, v in updates.items() if v is not None})
    recipe = recipe.model_copy(update={"eval": ev, "sampler": sampler_ref})

    model = ARModel(comps.backbone, comps.conditioner).eval()
    models = [("model", model)]
    if ref.ema_path is not None:
        ema = copy.deepcopy(model)
        load_strict(ema, read_weights(ref.ema_path), f"EMA weights {ref.ema_path}")
        models.append(("ema", ema.eval()))
        if recipe.eval.use_ema:
            models.reverse()
    if text:
        class_names = read_captions(run_dir)
        if class_names is None:
            raise AvgkitError(f"run {run_dir} has no caption table ({RunDir(run_dir).captions}); train it again")
        conditions: Any = CaptionTable(class_names, comps.conditioner)
    else:
        class_names, conditions = _class_names(inputs), None
    assert ref.model_path is not None and ref.step is not None
    step_dir = ref.model_path.parent
    result = TrainResult(ref.step, _run_records(run_dir, ref.step), step_dir if (step_dir / MARKER).is_file() else None)
    with FolderLock(out_dir, "run" if out_dir.resolve() == run_dir.resolve() else "eval folder"):
        _say(f"scoring {run_dir} at step {ref.step} with {name} ({ev.samples_per_class} samples per "
             f"{'prompt' if text else 'class'}) -> {RunDir(out_dir).eval}")
        record = final_samples(recipe, comps, models, class_names, out_dir, env, result, conditions)
    print("\n".join([*scorer.summary(record), f"wrote: {RunDir(out_dir).eval}, {record['samples_png']}"]),
          flush=True)
    return record


__all__ = ["score_run"]
