"""``avgkit train``: a recipe from images to a trained model, samples and a score.

:func:`run_recipe` runs, in order and resumably:

1. the tokenizer: when its ``weights`` file is missing and the recipe's tokenizer has
   a ``train:`` block, it is trained with the registered tokenizer trainer on the data
   source's images (otherwise the weights are reused);
2. the codes: when ``data.store`` is missing or incomplete, the source is encoded into
   it (an interrupted extraction continues); the store must match the tokenizer.
   ``data.store: null`` encodes the source in memory instead;
3. training (:class:`avgkit.train.loop.Trainer`), on one process or under ``torchrun``;
4. the final samples: ``eval.samples_per_class`` per class with the recipe's sampler,
   ``samples.png`` and ``eval.json`` (with the digit-classifier accuracy when
   ``eval.classifier`` is ``digits``; for ``text-digits``, every number's prompt sampled
   and both halves read, at CFG 1 and the recipe's CFG).

A recipe whose conditioner is conditioned on text trains on captioned data (an image
folder with a ``captions.jsonl``, or ``text-digits``): the codes' labels are caption ids,
the run records its caption table (``captions.json``) and the training loop and the
final samples look the captions up in it. A frozen text encoder's features of each
caption are extracted once into the code store beside the codes (step 2).

Only rank 0 writes; the other ranks wait for it at each stage.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import yaml

from avgkit.build import ARModel, Components, build, parameter_counts, resolve_config
from avgkit.data.sources import (
    describe_recorded,
    held_out_name,
    held_out_source,
    is_same_source,
    open_source,
    source_images,
)
from avgkit.errors import AvgkitError
from avgkit.eval.scorers import CONDITIONED, WEIGHTS_NAMES, SampleScorer, get_scorer, run_conditions
from avgkit.io import atomic_write, atomic_write_text
from avgkit.recipe import DataSection, Recipe, recipe_changes
from avgkit.registry import Registry
from avgkit.runs import checkpoint as ckpt
from avgkit.runs.layout import (
    CAPTIONS_FILE,
    CHECKPOINTS_DIR,
    INPUTS_FILE,
    LOSS_PLOT,
    METRICS_FILE,
    MODEL_FILE,
    PLUGINS_FILE,
    RECIPE_FILE,
    SAMPLES_DIR,
    RunDir,
)
from avgkit.runtime.distributed import DistEnv, barrier, broadcast_json, setup, teardown
from avgkit.sizes import canonical_size, same_size, size_text
from avgkit.train.loop import StepCallback, Trainer, TrainResult
from avgkit.train.regions import resolve_compile
from avgkit.train.step_graph import resolve_cuda_graph


@dataclass
class RunResult:
    """Where a run wrote what, and its final numbers."""

    run_dir: Path
    train: TrainResult
    eval: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- run dir
def _write_run_files(recipe: Recipe, run_dir: Path, resume: bool, registry: Registry) -> None:
    from avgkit.build import resolved_recipe_dict
    from avgkit.plugins import get_manager

    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = resolved_recipe_dict(recipe, registry)
    text = yaml.safe_dump(resolved, sort_keys=False)
    old = RunDir(run_dir).recipe
    if resume and old.exists() and old.read_text() != text:
        kept = _keep_previous_recipe(run_dir, old.read_text())
        changes = recipe_changes(old.read_text(), resolved)
        _say(f"note: resuming with a changed recipe ({changes}); the one before is kept as {kept}")
        lr_note = _schedule_change(old.read_text(), recipe)
        if lr_note:
            _say(f"note: {lr_note}")
    atomic_write_text(old, text)
    infos = [
        {"name": i.name, "version": i.version, "api_version": i.api_version, "module": i.module, "builtin": i.builtin}
        for i in get_manager().infos.values()
    ]
    atomic_write_text(RunDir(run_dir).plugins, json.dumps(infos, indent=2) + "\n")


def _schedule_change(old_text: str, recipe: Recipe) -> str | None:
    """What a resume does to the learning rate, when the schedule's settings changed.

    The rule: the learning rate is a function of the step and the current recipe's
    train section, so a resume follows the new schedule from the checkpoint's step on
    (warm-up, then the decay stretched to end at the new ``train.steps``).
    """
    from avgkit.recipe import TrainSection
    from avgkit.train.optim import lr_at

    latest = ckpt.latest_checkpoint(RunDir(recipe.run_dir).checkpoints)
    try:
        before = TrainSection.model_validate((yaml.safe_load(old_text) or {}).get("train") or {})
    except Exception:  # noqa: BLE001 - an unreadable old recipe: nothing to compare
        return None
    if latest is None:
        return None
    step, now = latest.step, recipe.train
    old_lr, new_lr = lr_at(step, before), lr_at(step, now)
    if math.isclose(old_lr, new_lr, rel_tol=1e-9, abs_tol=0.0):
        return None
    return (f"the learning rate at step {step} changes from {old_lr:.3g} to {new_lr:.3g}: the {now.schedule} schedule "
            f"now runs over {now.steps} steps (warm-up {now.warmup_steps}); a run trained straight to {now.steps} "
            f"steps does better than an extended one")


def _keep_previous_recipe(run_dir: Path, text: str) -> Path:
    """Save a recipe a resume replaces as ``recipe.previous-N.yaml`` (N = 1, 2, ...: none is lost)."""
    n = 1
    while (run_dir / f"recipe.previous-{n}.yaml").exists():
        n += 1
    path = run_dir / f"recipe.previous-{n}.yaml"
    atomic_write_text(path, text)
    return path


def _check_start(recipe: Recipe, resume: bool, registry: Registry) -> None:
    """A fresh run needs a folder without checkpoints; a resumed one a checkpoint its model fits.

    Checked before anything is written, so a refused start leaves the run as it was.
    """
    latest = ckpt.latest_checkpoint(RunDir(recipe.run_dir).checkpoints)
    if not resume:
        if latest is not None:
            raise AvgkitError(
                f"{recipe.run_dir} already holds checkpoints (last: step {latest.step}); pass --resume to continue, "
                f"or set output_dir to a new folder"
            )
        return
    if latest is None:
        raise AvgkitError(
            f"--resume: {recipe.run_dir} holds no complete checkpoint to resume from; run without --resume to "
            f"start training"
        )
    if recipe.train.steps < latest.step:
        raise AvgkitError(
            f"train.steps={recipe.train.steps} is below step {latest.step}, which {recipe.run_dir} has reached; pass "
            f"train.steps={latest.step} or more, or sample the run as it is with `avgkit sample {recipe.run_dir}`"
        )
    comps = build(recipe, device="meta", registry=registry)
    ckpt.check_fits(ARModel(comps.backbone, comps.conditioner), latest.path / MODEL_FILE,
                    fix=f"delete {latest.path} to resume from the one before, or start afresh in a new output_dir")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ----------------------------------------------------------------------------- sources
def _tokenizer_image_size(cfg: Any, data: DataSection) -> int | tuple[int, int]:
    size = getattr(cfg, "image_size", None) or data.image_size
    if size is None:
        raise AvgkitError("cannot tell the image size: set data.image_size or the tokenizer's image_size")
    return canonical_size(size)


# ----------------------------------------------------------------------------- tokenizer
def ensure_tokenizer_weights(recipe: Recipe, registry: Registry, env: DistEnv, *, progress: bool = True) -> Path | None:
    """Train the tokenizer when its ``weights`` file is missing and the recipe says how.

    Returns the weights path (``None`` for a tokenizer without a weights option).
    """
    ref = recipe.tokenizer
    cfg = resolve_config(registry, "tokenizer", ref)
    weights = getattr(cfg, "weights", None)
    if not weights:
        if ref.train is not None:
            raise AvgkitError(
                f"tokenizer {ref.name!r} has a train: block but no weights path; set tokenizer.weights to where "
                f"the trained weights should go"
            )
        return None
    path = Path(weights)
    if broadcast_json(path.exists(), env):  # rank 0 decides: every rank takes the same branch
        return path
    if ref.train is None:
        raise AvgkitError(
            f"tokenizer weights {path} not found; download or convert them there, or add a tokenizer.train: "
            f"block to the recipe to train the tokenizer"
        )
    if recipe.data is None:
        raise AvgkitError("training the tokenizer needs a data: section naming the images")
    spec = registry.get("tokenizer_trainer", ref.name)
    train_cfg = spec.resolve(None, ref.train)
    if env.is_main:
        size = _tokenizer_image_size(cfg, recipe.data)
        channels = getattr(cfg, "channels", 3)
        source = open_source(recipe.data.source, size, channels)
        images, _ = source_images(source)
        held_out = held_out_source(recipe.data.source, size, channels)
        eval_images = source_images(held_out)[0] if held_out is not None else None
        # one work folder per tokenizer, training settings and data: a finished run of other
        # settings is never reused
        key = hashlib.sha256(json.dumps(
            {"tokenizer": cfg.model_dump(mode="json", exclude={"weights"}), "train": train_cfg.model_dump(mode="json"),
             "name": ref.name, "source": source.describe()}, sort_keys=True, default=str).encode()).hexdigest()[:12]
        out_dir = recipe.run_dir / "tokenizer" / f"{ref.name}-{key}"
        _say(f"training tokenizer {ref.name!r} on {len(images)} images -> {path}")
        made = Path(
            # the recipe's weights path is where the result goes, not a starting point
            spec.factory(cfg.model_copy(update={"weights": None}), train_cfg, images, out_dir,
                         eval_images=eval_images, resume=True, progress=progress)
        )
        if not made.is_file():
            raise AvgkitError(f"the tokenizer trainer of {ref.name!r} returned {made}, which is not a file")
        if made.resolve() != path.resolve():
            atomic_write(path, lambda tmp: shutil.copyfile(made, tmp))
    barrier(env)
    return path


def tokenizer_fingerprint(tokenizer: torch.nn.Module, cfg: Any, weights: Path | None) -> str:
    """Identity of the codes a tokenizer makes: its weights file hash, else config + state."""
    from avgkit.data.store import weights_id

    if weights is not None:
        return weights_id(weights)
    h = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode())
    for name, t in sorted(tokenizer.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"state:{h.hexdigest()[:32]}"


# ----------------------------------------------------------------------------- codes
@dataclass
class TrainData:
    dataset: Any
    class_names: list[str]
    description: str
    #: the code store's content fingerprint (``None``: encoded in memory)
    fingerprint: str | None = None
    #: the source's description (``ImageSource.describe()``)
    source: dict[str, Any] = field(default_factory=dict)
    #: the frozen text encoder whose features the run trains on (``None``: none)
    text_encoder: dict[str, Any] | None = None


def _encode_in_memory(recipe: Recipe, comps: Components, env: DistEnv) -> TrainData:
    from avgkit.train.data import TensorCodes

    data_cfg = recipe.data
    assert data_cfg is not None
    tok = comps.tokenizer
    source = open_source(data_cfg.source, tok.image_size, tok.channels)
    _check_source(source, comps)
    images, labels = source_images(source)
    codes = []
    tok.eval()
    with torch.inference_mode():
        for start in range(0, len(images), data_cfg.prepare_batch_size):
            x = images[start : start + data_cfg.prepare_batch_size].to(env.device)
            codes.append(tok.encode(x).cpu())
    data = TensorCodes(torch.cat(codes), labels, num_classes=len(source.class_names))
    return TrainData(data, list(source.class_names), f"{len(data)} images of {data_cfg.source} encoded in memory",
                     source=source.describe())


def _prepare_store(recipe: Recipe, comps: Components, env: DistEnv, weights: Path | None, progress: bool) -> TrainData:
    from avgkit.data.loader import CodeDataset
    from avgkit.data.prepare import prepare
    from avgkit.data.store import CodeStore, StoreError

    data = recipe.data
    assert data is not None and data.store is not None
    tok = comps.tokenizer
    store_path = Path(data.store)
    wid = tokenizer_fingerprint(tok, comps.configs["tokenizer"], weights)
    if env.is_main:
        complete = False
        if (store_path / "zarr.json").is_file():
            try:
                complete = CodeStore.open(store_path, verify=False).meta.complete
            except StoreError:
                complete = False
        if complete:
            _check_store_source(CodeStore.open(store_path, verify=False), data, tok.image_size, tok.channels)
        else:
            source = open_source(data.source, tok.image_size, tok.channels)
            _check_source(source, comps)
            _say(f"encoding {data.source} into {store_path}")
            report = prepare(
                source,
                tok,
                store_path,
                batch_size=data.prepare_batch_size,
                device=env.device,
                augment=data.augment,
                progress=progress,
                num_workers=data.num_workers,
                tokenizer_name=recipe.tokenizer.name,
                preset=recipe.tokenizer.preset,
                weights=wid,
            )
            _say(str(report))
        CodeStore.open(store_path, mode="r+", verify=False).ensure_fingerprint()
    barrier(env)
    store = CodeStore.open(store_path)
    store.check_compatible(
        vocab_size=tok.codebook_size,
        num_tokens=tok.num_tokens,
        tokenizer=recipe.tokenizer.name,
        preset=recipe.tokenizer.preset,
        weights=wid,
        resolution=tok.image_size,
    )
    dataset = CodeDataset(store_path)
    return TrainData(dataset, list(store.meta.class_names), store.summary(), store.meta.fingerprint,
                     dict(store.meta.source))


def _check_store_source(store: Any, data: DataSection, image_size: int | tuple[int, int], channels: int) -> None:
    """Refuse a finished store encoded from another ``data.source`` (a moved image folder is recognised)."""
    if not is_same_source(store.meta.source, data.source, image_size, channels):
        raise AvgkitError(
            f"code store {store.path} was encoded from {describe_recorded(store.meta.source)} but data.source is "
            f"{data.source!r}; set data.source back, or set data.store to a new path to encode {data.source}"
        )


def load_train_data(
    recipe: Recipe, comps: Components, env: DistEnv, weights: Path | None, *, progress: bool = True
) -> TrainData:
    data = recipe.data
    if data is None:
        raise AvgkitError("the recipe has no data: section; add data: {source: digits, store: codes/digits.zarr}")
    tok = comps.tokenizer
    if data.image_size is not None and not same_size(data.image_size, tok.image_size):
        raise AvgkitError(
            f"data.image_size {size_text(data.image_size)} differs from the tokenizer's image size "
            f"{size_text(tok.image_size)}; remove data.image_size or change the tokenizer"
        )
    if data.store is None:
        if data.augment != "none":
            raise AvgkitError(
                f"data.augment={data.augment} needs a code store; set data.store to a path (e.g. codes/data.zarr)"
            )
        out = _encode_in_memory(recipe, comps, env)
    else:
        out = _prepare_store(recipe, comps, env, weights, progress)
    _check_labels(out.source, comps)
    _check_classes(len(out.class_names), comps)
    return out


def caption_conditions(recipe: Recipe, comps: Components, env: DistEnv, data: TrainData, *,
                       replace_features: bool = False) -> Any:
    """A text run's caption ids -> condition batches (``None`` for a class-conditional run).

    A trainable encoder (``words``, ``bytes``) gets the captions' token ids. A frozen one
    (``t5``, ``clip``) gets its features of each distinct caption, extracted once: into the
    code store (resumably, refused when the store's are another encoder's unless
    ``replace_features``), or in memory when ``data.store`` is null. Training then reads
    them and never runs the encoder.
    """
    from avgkit.data.captions import CaptionTable, takes_captions
    from avgkit.data.features import (
        IN_MEMORY_BYTES,
        encode_captions,
        extract_features,
        open_features,
        recorded_encoder,
    )

    cond = comps.conditioner
    if not takes_captions(cond):
        return None
    captions = list(data.class_names)
    store = recipe.data.store if recipe.data is not None else None
    identity = cond.frozen_encoder(recorded_encoder(store) if store else None)
    if identity is None:
        return CaptionTable(captions, cond)
    data.text_encoder = identity
    batch_size = recipe.data.prepare_batch_size if recipe.data is not None else 64
    if store is None:
        tokens = cond.tokenize(captions)
        values = encode_captions(cond, tokens.values, tokens.mask, identity["dtype"], batch_size)
        return CaptionTable(captions, features=torch.from_numpy(values), mask=tokens.mask)
    if env.is_main:
        report = extract_features(store, cond, captions, identity, batch_size=batch_size, replace=replace_features,
                                  say=_say)
        if report.encoded:
            _say(str(report))
    barrier(env)
    found = open_features(store, identity, captions)
    if found.nbytes <= IN_MEMORY_BYTES:
        values, mask = found.read_all()
        return CaptionTable(captions, features=values, mask=mask)
    return CaptionTable(captions, stored=found)


def _check_labels(description: dict[str, Any], comps: Components) -> None:
    """Class ids for a class conditioner, caption ids for a text conditioner."""
    from avgkit.data.captions import is_captioned, takes_captions

    where = describe_recorded(description)
    if takes_captions(comps.conditioner) and not is_captioned(description):
        raise AvgkitError(
            f"the conditioner is conditioned on text but {where} has class labels; point data.source at an image "
            f"folder with a captions.jsonl ({{\"path\": ..., \"caption\": ...}} a line), or at text-digits"
        )
    if is_captioned(description) and not takes_captions(comps.conditioner):
        raise AvgkitError(
            f"{where} is captioned (its labels are captions) but the conditioner takes class ids; use a text "
            f"conditioner (conditioner: text), or a data.source without captions"
        )


def _check_classes(found: int, comps: Components) -> None:
    from avgkit.data.captions import takes_captions

    if takes_captions(comps.conditioner):  # caption ids: as many as the data has
        return
    num_classes = comps.conditioner.num_classes
    if found > num_classes:
        raise AvgkitError(
            f"the data has {found} classes but the conditioner was built for {num_classes}; "
            f"set data.num_classes={found}"
        )


def _check_source(source: Any, comps: Components) -> None:
    """What can be checked before a single image is encoded: channels and class count."""
    from avgkit.data.prepare import check_channels

    check_channels(source, comps.tokenizer)
    _check_labels(source.describe(), comps)
    _check_classes(len(source.class_names), comps)


# ----------------------------------------------------------------------------- validation
def _val_name(data: DataSection | None) -> str | None:
    if data is None or data.val_source is None:
        return None
    if data.val_source == "auto":
        return held_out_name(data.source)
    return data.val_source


def validation_codes(recipe: Recipe, comps: Components, env: DistEnv,
                     captions: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Held-out images (``data.val_source``) encoded in memory, or ``None`` for no validation loss.

    ``auto`` takes the built-in sources' test split (every fifth digit, which the training
    split never holds, so the training set is unchanged); an ImageFolder root is encoded
    at every start, so keep it small (a few thousand images). For a text run,
    ``captions`` is the run's caption table: the held-out captions are looked up in it.
    """
    data = recipe.data
    if _val_name(data) is None:
        return None
    assert data is not None and data.val_source is not None
    tok = comps.tokenizer
    if data.val_source == "auto":
        source = held_out_source(data.source, tok.image_size, tok.channels)
        assert source is not None  # _val_name said there is one
    else:
        source = open_source(data.val_source, tok.image_size, tok.channels)
    images, labels = source_images(source)
    if captions is not None:
        labels = _caption_ids(source.class_names, labels, captions, data.val_source)
    codes = []
    with torch.inference_mode():
        for start in range(0, len(images), data.prepare_batch_size):
            codes.append(tok.encode(images[start : start + data.prepare_batch_size].to(env.device)).cpu())
    return torch.cat(codes).long(), labels


def _caption_ids(names: Sequence[str], labels: torch.Tensor, captions: Sequence[str], where: str) -> torch.Tensor:
    """A held-out source's caption ids as ids of the run's caption table."""
    ids = {c: i for i, c in enumerate(captions)}
    unknown = sorted({names[i] for i in labels.tolist()} - ids.keys())
    if unknown:
        raise AvgkitError(
            f"data.val_source {where}: {len(unknown)} caption(s) are not training captions (first: {unknown[0]!r}); "
            f"the validation loss needs the training captions, so sample new ones with `avgkit sample --prompt`"
        )
    return torch.as_tensor([ids[names[i]] for i in labels.tolist()], dtype=torch.int64)


# ----------------------------------------------------------------------------- inputs
def _record_inputs(recipe: Recipe, run_dir: Path, weights: Path | None, data: TrainData, resume: bool) -> None:
    """Write ``inputs.json``, pinning the tokenizer into the run; on resume, refuse changed inputs first."""
    from avgkit.io import atomic_write_json, sha256_file
    from avgkit.runs.inputs import INPUTS_FILE, RUN_TOKENIZER_FILE, file_record, read_inputs, short

    before = read_inputs(run_dir) if resume else None
    record: dict[str, Any] = {"recipe": {"sha256": sha256_file(RunDir(run_dir).recipe)}}
    if weights is not None:
        tok = file_record(weights)
        old = (before or {}).get("tokenizer")
        if old and old["sha256"] != tok["sha256"]:
            raise AvgkitError(
                f"tokenizer weights {weights} are not the ones run {run_dir} was trained with ({short(tok['sha256'])} "
                f"now, {short(old['sha256'])} then; the run keeps its copy as {run_dir / old['file']}); point "
                f"tokenizer.weights at that copy, or start a new run in another output_dir"
            )
        inside = weights.resolve().is_relative_to(run_dir.resolve())
        copy = weights if inside else run_dir / RUN_TOKENIZER_FILE
        if not inside and not (copy.is_file() and file_record(copy)["sha256"] == tok["sha256"]):
            atomic_write(copy, lambda tmp: shutil.copyfile(weights, tmp))
        record["tokenizer"] = {"file": str(copy.resolve().relative_to(run_dir.resolve())), "from": str(weights),
                               **file_record(copy)}
    if data.fingerprint is not None:
        old_store = (before or {}).get("code_store") or {}
        if old_store.get("fingerprint") and old_store["fingerprint"] != data.fingerprint:
            raise AvgkitError(
                f"code store {recipe.data.store if recipe.data else ''} holds other codes than run {run_dir} was "
                f"trained on ({short(data.fingerprint)} now, {short(old_store['fingerprint'])} then, from "
                f"{old_store.get('path')}); point data.store at the original store, or start a new run"
            )
        record["code_store"] = {"path": recipe.data.store if recipe.data else None, "fingerprint": data.fingerprint}
    old_source = (before or {}).get("data_source") or {}
    if data.fingerprint is None and old_source.get("description") not in (None, data.source):
        raise AvgkitError(
            f"data.source {recipe.data.source if recipe.data else None!r} is not the data run {run_dir} was trained "
            f"on ({old_source.get('source')!r}); set data.source back, or start a new run"
        )
    record["data_source"] = {"source": recipe.data.source if recipe.data else None, "description": data.source}
    if data.text_encoder is not None:
        from avgkit.data.features import describe_encoder, encoder_difference

        old_enc = (before or {}).get("text_encoder")
        key = None if old_enc is None else encoder_difference(old_enc, data.text_encoder)
        if key is not None:
            raise AvgkitError(
                f"text encoder {describe_encoder(data.text_encoder)} is not the one run {run_dir} was trained with "
                f"({describe_encoder(old_enc)}; they differ in {key}); point conditioner.path at that encoder, or "
                f"start a new run"
            )
        record["text_encoder"] = data.text_encoder
    atomic_write_json(run_dir / INPUTS_FILE, record, indent=1)


# ----------------------------------------------------------------------------- final eval
GRID_COLUMNS = 16



def _sample_and_score(
    recipe: Recipe, comps: Components, model: ARModel, labels: torch.Tensor, env: DistEnv, scorer: SampleScorer | None,
    conditions: Callable[[torch.Tensor], Any] | None = None, sampler: Any = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    from avgkit.sample.grids import generate_images

    ev = recipe.eval
    cond = labels if conditions is None else conditions(labels)
    images = generate_images(model.backbone, model.conditioner, sampler or comps.sampler, comps.tokenizer, cond,
                             seed=ev.seed, batch_size=ev.batch_size, device=env.device)
    return images, ({} if scorer is None else scorer.score(images, labels))


def _cfg_scale(sampler: Any) -> float | None:
    """The sampler's guidance scale (``None``: it has none)."""
    scale = getattr(getattr(sampler, "config", None), "cfg_scale", None)
    return None if scale is None else float(scale)


def _sampler_at(sampler: Any, scale: float | None) -> Any:
    """The recipe's sampler at another guidance scale, its other settings kept."""
    if scale is None or _cfg_scale(sampler) in (None, scale):
        return sampler
    return type(sampler)(sampler.config.model_copy(update={"cfg_scale": scale}))


def final_samples(
    recipe: Recipe,
    comps: Components,
    models: Sequence[tuple[str, ARModel]],
    class_names: Sequence[str],
    run_dir: Path,
    env: DistEnv,
    train_result: TrainResult,
    conditions: Callable[[torch.Tensor], Any] | None = None,
) -> dict[str, Any]:
    """Sample and score every set of weights in ``models`` (``("ema", m)``, ``("model", m)``).

    The first is the run's result: ``samples.png`` and the top-level scores of
    ``eval.json``; the others get ``samples-<name>.png``. Every grid title and the
    record name the weights; ``by_weights`` holds each set's scores. For a text run,
    ``conditions`` turns caption ids (``class_names`` are the captions) into conditions;
    a text scorer samples its own prompts instead. A scorer that asks for several
    guidance scales gets each set's scores at each in ``by_cfg``; the top-level scores and
    the grids are at the recipe's.
    """
    from avgkit.images import save_labelled_grid, to_uint8_hwc
    from avgkit.sample.grids import grid_labels

    ev = recipe.eval
    scorer = get_scorer(ev.classifier)
    trained_captions = list(class_names) if conditions is not None else None
    prompts = scorer.prompts() if scorer is not None else None
    if prompts is not None:  # the scorer's prompts, trained on or not: labels index them
        from avgkit.data.captions import CaptionTable

        conditions = CaptionTable(prompts, models[0][1].conditioner)
        class_names = prompts
    num_classes = len(class_names) if conditions is not None else models[0][1].conditioner.num_classes
    if scorer is not None:
        labels = scorer.labels(num_classes, ev.samples_per_class, ev.grid_classes)
        shown_classes = scorer.grid_rows(labels, ev.grid_classes)
        row_names = scorer.row_names(list(class_names)) if class_names else None
    else:
        labels = grid_labels(num_classes, ev.grid_classes, ev.samples_per_class)
        shown_classes = torch.unique(labels)[: ev.grid_classes].tolist()
        row_names = list(class_names)
    # at most GRID_COLUMNS samples of each class in the picture, rows in the scorer's order
    # (all of them are evaluated)
    shown = torch.cat([torch.nonzero(labels == c).flatten()[:GRID_COLUMNS] for c in shown_classes])
    recipe_scale = _cfg_scale(comps.sampler)
    scales = scorer.cfg_scales(recipe_scale) if scorer is not None else [None]
    by_weights: dict[str, dict[str, Any]] = {}
    primary = models[0][0]
    for name, model in models:
        by_cfg: dict[str, dict[str, Any]] = {}
        for scale in scales:  # the recipe's scale last: its images make the grid
            images, score = _sample_and_score(recipe, comps, model, labels, env, scorer, conditions,
                                              _sampler_at(comps.sampler, scale))
            by_cfg["sampler" if scale is None else f"{scale:g}"] = score
        png = save_labelled_grid(
            to_uint8_hwc(images[shown]),
            labels[shown].tolist(),
            RunDir(run_dir).samples(None if name == primary else name),
            title=f"{recipe.name} step {train_result.step}, {WEIGHTS_NAMES.get(name, name)}"
                  + (f", CFG {recipe_scale:g}" if len(scales) > 1 and recipe_scale is not None else ""),
            class_names=row_names,
        )
        by_weights[name] = {"samples_png": str(png), **score, **({"by_cfg": by_cfg} if len(scales) > 1 else {})}
    record: dict[str, Any] = {
        "step": train_result.step,
        "checkpoint": str(train_result.checkpoint) if train_result.checkpoint else None,
        "weights": primary,
        "samples": len(labels),
        "samples_per_class": ev.samples_per_class,
        "classes": sorted(set(labels.tolist())),
        **({"captions": [class_names[c] for c in sorted(set(labels.tolist()))]} if conditions is not None else {}),
        **({"prompts_in_training": [p in trained_captions for p in prompts]}
           if prompts is not None and trained_captions is not None else {}),
        "sampler": recipe.sampler.flat(),
        "seed": ev.seed,
        "samples_png": by_weights[primary]["samples_png"],
    }
    if train_result.final_loss is not None:
        record["final_train_loss"] = train_result.final_loss
    if train_result.final_val_loss is not None:
        record["final_val_loss"] = train_result.final_val_loss
    if scorer is not None:
        record["classifier"] = scorer.description
        if len(scales) > 1:
            record["cfg_scales"] = scales
        record.update({k: v for k, v in by_weights[primary].items() if k != "samples_png"})
    record["by_weights"] = by_weights
    atomic_write_text(RunDir(run_dir).eval, json.dumps(record, indent=2) + "\n")
    return record


# ----------------------------------------------------------------------------- main
def run_recipe(
    recipe: Recipe,
    resume: bool = False,
    *,
    progress: bool = True,
    callbacks: Sequence[StepCallback] = (),
    registry: Registry | None = None,
) -> RunResult:
    """Tokenizer (train or reuse) -> codes (prepare or reuse) -> train -> samples + eval.

    Launched by ``torchrun`` it trains with DDP on every process; the global batch is
    the recipe's whatever the number of processes. ``resume`` continues from the run
    directory's last complete checkpoint (and starts afresh when there is none).
    """
    if registry is None:
        from avgkit.plugins import get_registry

        registry = get_registry()
    env = setup(recipe.train.device, parallel=recipe.train.parallel)
    try:
        return _run(recipe, resume, env, registry, progress and env.is_main, callbacks)
    finally:
        teardown(env)


#: how the run's first line names train.compile's choice (the first step then compiles)
_COMPILED = {"off": "", "model": ", compiled", "blocks": ", blocks compiled"}
#: What a run writes at its start; a run that fails before its first checkpoint removes them.
_RUN_FILES = (RECIPE_FILE, PLUGINS_FILE, INPUTS_FILE, CAPTIONS_FILE, METRICS_FILE, LOSS_PLOT)


def _run(
    recipe: Recipe, resume: bool, env: DistEnv, registry: Registry, progress: bool, callbacks: Sequence[StepCallback]
) -> RunResult:
    from avgkit.runs.lock import FolderLock
    from avgkit.runtime.stop import Interrupted

    run_dir = recipe.run_dir
    existed = run_dir.exists()
    lock = FolderLock(run_dir, "run").acquire() if env.is_main else None
    try:
        return _run_locked(recipe, resume, env, registry, progress, callbacks)
    except Interrupted:
        raise
    except BaseException:
        if env.is_main:
            _remove_debris(run_dir, existed)
        raise
    finally:
        if lock is not None:
            lock.release()
            if not existed and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {lock.path.name}:
                lock.path.unlink(missing_ok=True)  # a run that wrote nothing leaves no folder
                run_dir.rmdir()


def _remove_debris(run_dir: Path, existed: bool) -> None:
    """After a failure before the first checkpoint, remove what the run wrote (kept inputs stay)."""
    if ckpt.latest_checkpoint(RunDir(run_dir).checkpoints) is not None:
        return  # a resumable run: everything stays
    for name in _RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for folder in (CHECKPOINTS_DIR, SAMPLES_DIR):
        shutil.rmtree(run_dir / folder, ignore_errors=True)


@dataclass
class _Run:
    """What the stages of one run hand each other."""

    recipe: Recipe
    resume: bool
    env: DistEnv
    registry: Registry
    progress: bool
    callbacks: Sequence[StepCallback]
    weights: Path | None = None
    comps: Components | None = None
    data: TrainData | None = None
    trainer: Trainer | None = None
    #: a text run's caption ids -> conditions (``None``: labels are class ids)
    conditions: Any = None
    result: TrainResult | None = None
    loggers: Any = None
    record: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def _stage_check(run: _Run) -> None:
    """Refuse what would fail later before anything is written; then write the run's own files."""
    recipe = run.recipe
    _check_start(recipe, run.resume, run.registry)
    get_scorer(recipe.eval.classifier)  # a missing dependency fails before training, not after it
    fsdp = recipe.train.parallel == "fsdp"
    if fsdp or recipe.train.compile == "blocks":  # blocks FSDP cannot shard, or compile, are refused before writing
        from avgkit.train.parallel import fsdp_blocks

        backbone = build(recipe, device="meta", registry=run.registry).backbone
        if fsdp:
            fsdp_blocks(backbone)
        resolve_compile(recipe.train.compile, run.env.device, fsdp, backbone)
    if recipe.train.cuda_graph == "on":  # where it cannot apply, refused before anything is written
        from avgkit.data.captions import takes_captions

        conditioner = build(recipe, device="meta", registry=run.registry).conditioner
        resolve_cuda_graph("on", run.env.device, distributed=run.env.distributed,
                           class_labels=not takes_captions(conditioner))
    if run.env.is_main:
        _write_run_files(recipe, recipe.run_dir, run.resume, run.registry)


def _stage_tokenizer(run: _Run) -> None:
    """Train the tokenizer or reuse its weights, then build every component."""
    recipe, env = run.recipe, run.env
    run.weights = ensure_tokenizer_weights(recipe, run.registry, env, progress=run.progress)
    seed_everything(recipe.train.seed)
    run.comps = comps = build(recipe, device=env.device, registry=run.registry)
    comps.tokenizer.requires_grad_(False).eval()
    if run.weights is None and comps.tokenizer.state_dict():  # learned state, yet nothing to load it from
        raise AvgkitError(
            f"tokenizer {recipe.tokenizer.name!r} has no weights, so its codes would come from random parameters; "
            f"set tokenizer.weights to a weights file, or add a tokenizer.train: block to train it"
        )


def _stage_data(run: _Run) -> None:
    """Encode the images into codes (or reuse the store) and record what the run is made from
    (a text run: its caption table too)."""
    from avgkit.data.captions import takes_captions
    from avgkit.runs.captions import write_captions

    recipe, env, comps = run.recipe, run.env, run.comps
    assert comps is not None
    run.data = data = load_train_data(recipe, comps, env, run.weights, progress=run.progress)
    scorer = get_scorer(recipe.eval.classifier)
    text = takes_captions(comps.conditioner)
    if scorer is not None and scorer.conditions != run_conditions(text):
        raise AvgkitError(f"eval.classifier={recipe.eval.classifier} scores {CONDITIONED[scorer.conditions]} samples; "
                          f"set eval.classifier=none (or a classifier for a {CONDITIONED[run_conditions(text)]} run)")
    if scorer is not None:
        scorer.check_data(data.source)
    if text:
        run.conditions = caption_conditions(recipe, comps, env, data)
        if env.is_main:
            write_captions(recipe.run_dir, data.class_names)
    if env.is_main:
        _record_inputs(recipe, recipe.run_dir, run.weights, data, run.resume)
        counts = parameter_counts(comps)
        compiled = resolve_compile(recipe.train.compile, env.device, recipe.train.parallel == "fsdp", comps.backbone)
        graphed = resolve_cuda_graph(recipe.train.cuda_graph, env.device, distributed=env.distributed,
                                     class_labels=not text)
        _say(
            f"{recipe.name}: {counts['total']:,} parameters ({counts['non_embedding']:,} non-embedding) "
            f"on {env.world_size} x {env.device}{_COMPILED[compiled]}{', steps replayed from a CUDA graph' * graphed}; "
            f"data: {data.description}"
        )


def _stage_train(run: _Run) -> None:
    """The AR training loop, from the last checkpoint when resuming."""
    from avgkit.loggers import open_loggers
    from avgkit.train.data import StepBatches

    recipe, env, comps, data = run.recipe, run.env, run.comps, run.data
    assert comps is not None and data is not None
    run.loggers = open_loggers(recipe, recipe.run_dir, run.registry) if env.is_main and recipe.loggers else None
    cfg = recipe.train
    batches = StepBatches(
        data.dataset,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        rank=env.rank,
        world_size=env.world_size,
        seed=cfg.seed,
        num_workers=recipe.data.num_workers if recipe.data else 0,
        pin_memory=env.device.type == "cuda",
    )
    val_data = validation_codes(recipe, comps, env, data.class_names if run.conditions is not None else None)
    if val_data is not None and env.is_main:
        _say(f"validation: {len(val_data[0])} held-out images ({_val_name(recipe.data)})")
    run.trainer = Trainer(
        ARModel(comps.backbone, comps.conditioner),
        batches,
        cfg,
        val_data=val_data,
        env=env,
        run_dir=recipe.run_dir,
        sampler=comps.sampler,
        tokenizer=comps.tokenizer,
        class_names=data.class_names,
        progress=run.progress,
        callbacks=run.callbacks,
        title=recipe.name,
        loggers=run.loggers,
        conditions=run.conditions,
    )
    run.result = run.trainer.fit(resume=run.resume)


def _stage_evaluate(run: _Run) -> None:
    """Sample and score the final weights (EMA and raw when EMA is on), then the summary."""
    recipe, env, comps, data, trainer, result = run.recipe, run.env, run.comps, run.data, run.trainer, run.result
    assert comps is not None and data is not None and trainer is not None and result is not None
    run_dir = RunDir(recipe.run_dir)
    run.files = {"run_dir": str(run_dir.root)}
    weights = trainer.sampling_models()  # every rank: under FSDP the shards are gathered to rank 0
    if env.is_main:
        assert weights is not None
        # with EMA on, both sets are sampled and scored: the EMA weights first when eval.use_ema
        models = [(name, cast(ARModel, m)) for name, m in weights]
        if recipe.eval.use_ema:
            models.sort(key=lambda pair: pair[0] != "ema")
        run.record = final_samples(recipe, comps, models, data.class_names, run_dir.root, env, result,
                                   run.conditions)
        if run.loggers:
            run.loggers.log_metrics(result.step, run.record, prefix="eval/")
            run.loggers.log_images(result.step, {"final_samples": run_dir.samples()})
            run.loggers.close()
        run.files.update({
            "recipe": str(run_dir.recipe),
            "metrics": str(run_dir.metrics),
            "loss_curve": str(run_dir.loss_plot),
            "checkpoint": str(result.checkpoint) if result.checkpoint else "",
            "samples": str(run_dir.samples()),
            "eval": str(run_dir.eval),
        })
        if run.conditions is not None:
            run.files["captions"] = str(run_dir.captions)
        if run.weights is not None:
            run.files["tokenizer_weights"] = str(run.weights)
        if recipe.data and recipe.data.store:
            run.files["code_store"] = recipe.data.store
        _print_summary(run.record, run.files, result, recipe.eval.classifier)
    run.record = broadcast_json(run.record, env)


#: The stages of ``avgkit train``, in order; each hands what it made to the next through
#: :class:`_Run`. ``avgkit prepare`` runs the tokenizer and data stages' functions alone.
STAGES = (
    ("check", _stage_check),
    ("tokenizer", _stage_tokenizer),
    ("data", _stage_data),
    ("train", _stage_train),
    ("evaluate", _stage_evaluate),
)


def _run_locked(
    recipe: Recipe, resume: bool, env: DistEnv, registry: Registry, progress: bool, callbacks: Sequence[StepCallback]
) -> RunResult:
    run = _Run(recipe, resume, env, registry, progress, callbacks)
    for _name, stage in STAGES:
        stage(run)
    assert run.result is not None
    return RunResult(recipe.run_dir, run.result, run.record, run.files)


def _print_summary(record: dict[str, Any], files: dict[str, str], result: TrainResult, classifier: str) -> None:
    lines = [f"trained {result.step} steps in {result.seconds:.0f} s"]
    if result.final_loss is not None:
        lines[0] += f", final loss {result.final_loss:.4f}"
    if result.final_val_loss is not None:
        lines[0] += f", validation loss {result.final_val_loss:.4f}"
    scorer = get_scorer(classifier)
    if scorer is not None:
        lines += scorer.summary(record)
    else:
        lines.append(f"samples from the {WEIGHTS_NAMES.get(record['weights'], record['weights'])}")
    width = max(len(k) for k in files)
    lines.append("wrote:")
    lines += [f"  {k:<{width}}  {v}" for k, v in files.items() if v]
    print("\n".join(lines), flush=True)
