"""Recipes: YAML files that compose components by registry name, validated by pydantic.

A component is named by ``name`` plus an optional ``preset``, with any other keys
being that component's options (validated against its own config model)::

    backbone: {name: mamba2, preset: aim-b}
    conditioner: adaln-single            # shorthand for {name: adaln-single}
    sampler: ar:llamagen                 # shorthand for {name: ar, preset: llamagen}

Command-line overrides are ``key.sub=value`` with YAML values
(``train.steps=100``, ``conditioner=adaln-group``, ``conditioner.groups=8``).

A recipe may start from another with ``base:`` (a packaged recipe name, or a path
ending in ``.yaml`` relative to the recipe's own folder), and change only what
differs; see :func:`read_recipe`::

    base: aim-b
    name: aim-b-adaln-single
    conditioner: adaln-single
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from avgkit.errors import AvgkitError, did_you_mean
from avgkit.sizes import ImageSize

#: the recipe keys that name a component
COMPONENT_KEYS = ("tokenizer", "backbone", "conditioner", "sampler")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ComponentRef(_Strict):
    """A component by registry name, preset and options."""

    name: str
    preset: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] | None = Field(None, description="tokenizer only: how to train it when weights are missing")

    @model_validator(mode="before")
    @classmethod
    def _gather(cls, value: Any) -> Any:
        if isinstance(value, str):
            name, _, preset = value.partition(":")
            return {"name": name, "preset": preset or None}
        if isinstance(value, dict):
            value = dict(value)
            own = {k: value.pop(k) for k in ("name", "preset", "train") if k in value}
            options = dict(value.pop("options", None) or {})
            options.update(value)
            return {**own, "options": options}
        return value

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.preset:
            out["preset"] = self.preset
        out.update(self.options)
        if self.train is not None:
            out["train"] = self.train
        return out


class DataSection(_Strict):
    source: str = Field(
        "digits",
        description="'digits' or 'text-digits' (built-in), or the root of an ImageFolder tree; a tree holding a "
        "captions.jsonl ({path, caption} a line) is captioned: its labels are caption ids, for a text conditioner",
    )
    num_classes: int | None = Field(None, ge=1, description="class labels in the data (sizes the conditioner)")
    store: str | None = Field(
        None,
        description="zarr code store path (created by `avgkit prepare`, or by `avgkit train` when missing); "
        "null encodes the source in memory at every start (small data sets only)",
    )
    image_size: ImageSize | None = Field(
        None, description="S (square) or [H, W] in pixels; defaults to the tokenizer's image size, which it must equal"
    )
    augment: Literal["none", "flip", "tencrop"] = Field(
        "none", description="codes stored per image: none, flip (2 views) or tencrop (10 views, the paper's)"
    )
    val_source: str | None = Field(
        "auto",
        description="held-out images for the validation loss: auto (the digits source's held-out fifth; none for "
        "an image folder), the root of an ImageFolder tree, or null",
    )
    prepare_batch_size: int = Field(64, ge=1, description="images per tokenizer batch while encoding the store")
    num_workers: int = Field(0, ge=0, description="image-loading worker processes while encoding")


def _bool_choice(value: Any, true: str) -> Any:
    """A boolean for a choice setting: ``true``'s choice or off (YAML reads a bare on / off as true / false)."""
    return (true if value else "off") if isinstance(value, bool) else value


class TrainSection(_Strict):
    steps: int = Field(1000, ge=1, description="optimizer steps in total")
    batch_size: int = Field(64, ge=1, description="global batch (all processes, all accumulation steps)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per step on each process")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (per base_batch with lr_scaling: linear)")
    lr_scaling: Literal["none", "linear"] = Field("none", description="linear: lr * batch_size / base_batch")
    base_batch: int = Field(256, ge=1, description="batch that lr refers to under linear scaling")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW (beta1, beta2)")
    weight_decay: float = Field(0.05, ge=0, description="AdamW decay of weight matrices (not norms, biases, tables)")
    warmup_steps: int = Field(0, ge=0, description="linear warmup from lr/warmup_steps to lr")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "linear", description="lr after warmup: constant, or a linear / cosine decay to min_lr_ratio * lr"
    )
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final lr as a fraction of the peak")
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm; null disables clipping")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    ema: float | None = Field(None, gt=0, lt=1, description="EMA decay of the weights, e.g. 0.9999")
    compile: Literal["auto", "off", "model", "blocks"] = Field(
        "auto", description="torch.compile for training: blocks (each backbone block on its own: one trace shared "
        "by all blocks), model (the whole forward as one graph), off; auto: blocks on a GPU, off on the CPU and "
        "under fsdp; true means model"
    )

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_bool(cls, value: Any) -> Any:
        return _bool_choice(value, "model")

    cuda_graph: Literal["auto", "on", "off"] = Field(
        "auto", description="replay each training step (forwards, backwards, clipping, update) from one CUDA graph, "
        "so the host's launches stop pacing a small model's step; auto: on a single GPU process training on class "
        "labels, off elsewhere"
    )

    @field_validator("cuda_graph", mode="before")
    @classmethod
    def _cuda_graph_bool(cls, value: Any) -> Any:
        return _bool_choice(value, "on")

    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: ddp (a full replica per process) or fsdp (parameters, gradients and "
        "optimizer state sharded per backbone block; sharded checkpoints)"
    )
    fused_loss: bool = Field(
        True, description="form the output layer's logits and the loss by chunks of tokens, never all at once "
        "(backbones that expose their head; the others train on full logits)"
    )
    seed: int = Field(0, description="seeds initialisation, data order and label dropout")
    device: str = Field("auto", description="auto (each rank's GPU, else CPU), cpu, cuda or cuda:N")
    log_every: int = Field(10, ge=1, description="steps per metrics.jsonl record (losses averaged over them)")
    ckpt_every: int = Field(500, ge=1, description="steps between checkpoints (the last step always saves)")
    keep_last: int = Field(3, ge=1, description="complete checkpoints kept")
    val_every: int | None = Field(
        None, ge=1, description="steps between validation losses on data.val_source (default: at each checkpoint)"
    )
    sample_every: int | None = Field(None, ge=1, description="write a sample grid every this many steps")
    sample_classes: int = Field(10, ge=1, description="rows of the periodic sample grid (classes spread evenly)")
    sample_per_class: int = Field(8, ge=1, description="columns of the periodic sample grid")


class EvalSection(_Strict):
    samples_per_class: int = Field(10, ge=1, description="final samples drawn per class after training")
    batch_size: int = Field(100, ge=1, description="images sampled at once")
    seed: int = Field(0, description="sampling seed (image i depends only on the seed, i and its class)")
    classifier: Literal["none", "digits", "text-digits"] = Field(
        "none", description="digits: class accuracy of the samples under an independent digit classifier; "
        "text-digits: every number 20-99 sampled by its words, both halves read by that classifier, accuracy on "
        "seen and held-out numbers at CFG 1 and the sampler's CFG"
    )
    grid_classes: int = Field(
        10, ge=1, description="classes sampled (spread evenly) when no classifier needs all; rows of samples.png"
    )
    use_ema: bool = Field(True, description="sample from the EMA weights when train.ema is set")


class Recipe(_Strict):
    name: str = Field(description="the recipe's name (no '/'); a packaged recipe's equals its file name")
    description: str = Field("", description="one line for `avgkit recipes ls`")
    tokenizer: ComponentRef = Field(description="images <-> codes (see components)")
    backbone: ComponentRef = Field(description="the sequence model (see components)")
    conditioner: ComponentRef = Field(description="class labels -> prefix and modulation (see components)")
    sampler: ComponentRef = Field(default_factory=lambda: ComponentRef(name="ar"),
                                  description="how codes are drawn from the backbone (see components)")
    data: DataSection | None = Field(None, description="the training images and their code store (see data)")
    train: TrainSection = Field(default_factory=TrainSection, description="see train")
    eval: EvalSection = Field(default_factory=EvalSection, description="see eval")
    loggers: list[ComponentRef] = Field(
        default_factory=list,
        description="metric loggers fed the training records and sample grids, e.g. [tensorboard, wandb] "
        "(`avgkit ls loggers`); metrics.jsonl is always written",
    )
    output_dir: str | None = Field(None, description="run directory; default runs/<name>")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v:
            raise ValueError("recipe name must be non-empty and contain no '/'")
        return v

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude_none=True)
        for role in ("tokenizer", "backbone", "conditioner", "sampler"):
            d[role] = getattr(self, role).flat()
        if self.loggers:
            d["loggers"] = [ref.flat() for ref in self.loggers]
        else:
            d.pop("loggers", None)  # recipes without loggers keep the text they always had
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def resolved_dict(recipe: Recipe, *, components: bool = True) -> dict[str, Any]:
    """Every key of ``recipe``, nulls included (what ``avgkit recipes show`` prints).

    With ``components``, each component lists every option of its config, as its
    preset and defaults fill them (this imports the component's config).
    """
    d = recipe.model_dump(mode="json")
    for role in COMPONENT_KEYS:
        ref: ComponentRef = getattr(recipe, role)
        flat: dict[str, Any] = {"name": ref.name, "preset": ref.preset}
        if components:
            from avgkit.plugins import get_registry

            flat.update(get_registry().get(role, ref.name).resolve(ref.preset, ref.options).model_dump(mode="json"))
        else:
            flat.update(ref.options)
        if role == "tokenizer":
            flat["train"] = ref.train
        d[role] = flat
    loggers = []
    for ref in recipe.loggers:
        flat = {"name": ref.name, "preset": ref.preset}
        if components:
            from avgkit.plugins import get_registry

            flat.update(get_registry().get("metric_logger", ref.name).resolve(ref.preset, ref.options).model_dump(mode="json"))
        else:
            flat.update(ref.options)
        loggers.append(flat)
    d["loggers"] = loggers
    return d


# ----------------------------------------------------------------------------- loading
def _model_for(path: Sequence[str]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Recipe
    for key in path:
        if model is None or key not in model.model_fields:
            return None
        ann = model.model_fields[key].annotation
        args = getattr(ann, "__args__", ())
        candidates = [a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = candidates[0] if candidates else None
    return model


def _loc(error: Any) -> list[str]:
    """The key path of one pydantic error, without validator-function entries."""
    return [str(p) for p in error["loc"] if not str(p).startswith("function-")]


def _explain(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    loc = _loc(e)
    where = ".".join(loc) or "(top level)"
    others = [".".join(_loc(o)) or "(top level)" for o in err.errors()[1:]]
    more = f" (also: {', '.join(others[:4])}{' ...' if len(others) > 4 else ''})" if others else ""
    if e["type"] == "extra_forbidden":
        parent = _model_for(loc[:-1])
        hint = did_you_mean(loc[-1], parent.model_fields) if parent else ""
        return f"{source}: unknown key {where!r}{hint}{more}"
    if e["type"] == "missing":
        return f"{source}: missing required key {where!r}{more}"
    return f"{source}: {where}: {e['msg']}{more}"


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise AvgkitError(f"override {text!r} is not key=value (e.g. train.steps=100)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw recipe mapping (returns a copy)."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if isinstance(child, str) and depth == 0 and key in COMPONENT_KEYS:
                child = ComponentRef.model_validate(child).flat()
            if child is None:
                child = {"name": "ar"} if (depth, key) == (0, "sampler") else {}
            if not isinstance(child, dict):
                raise AvgkitError(f"override {text!r}: {'.'.join(keys[: depth + 1])} is not a section")
            node[key] = child
            node = child
        node[keys[-1]] = value
    return out


def validate_recipe(raw: Any, source: str = "recipe") -> Recipe:
    if raw is None:
        raise AvgkitError(f"{source} is empty; a recipe needs at least name, tokenizer, backbone and conditioner")
    if not isinstance(raw, dict):
        raise AvgkitError(f"{source}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise AvgkitError(_explain(err, source)) from None


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AvgkitError(f"recipe file not found: {path}") from None
    except UnicodeDecodeError:
        raise AvgkitError(f"recipe {path} is not UTF-8 text; is it the right file?") from None
    except OSError as err:
        raise AvgkitError(f"cannot read recipe {path}: {err.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise AvgkitError(f"{path}:{where} is not valid YAML ({problem})") from None
    except ValueError as err:  # a scalar the loader cannot build, e.g. the date 2020-13-01
        raise AvgkitError(f"{path} is not valid YAML ({err})") from None


def _component_mapping(value: Any) -> Any:
    """A component written as ``name`` or ``name:preset`` as a mapping (other values unchanged)."""
    if isinstance(value, str):
        return ComponentRef.model_validate(value).flat()
    return value


def merge_recipes(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` laid over ``base``: mappings merge key by key, anything else replaces.

    A component section (tokenizer, backbone, conditioner, sampler) that names another
    component than the base's starts afresh: ``backbone: {name: my-net}`` over a base's
    ``{name: mamba2, preset: digits}`` keeps neither the preset nor mamba2's options.
    """

    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for key, value in b.items():
                out[key] = merge(a[key], value) if key in a else value
            return out
        return b

    out = dict(base)
    for key, value in child.items():
        if key in COMPONENT_KEYS and key in base:
            old, new = _component_mapping(base[key]), _component_mapping(value)
            if isinstance(old, dict) and isinstance(new, dict) and new.get("name", old.get("name")) == old.get("name"):
                out[key] = merge(old, new)
                continue
            out[key] = new
        else:
            out[key] = merge(base[key], value) if key in base else value
    return out


def _base_path(ref: Any, path: Path) -> Path:
    if not isinstance(ref, str) or not ref.strip():
        raise AvgkitError(f"{path}: base must be a recipe name or a .yaml path, got {ref!r}")
    if ref.endswith((".yaml", ".yml")):
        target = Path(ref) if Path(ref).is_absolute() else path.parent / ref
        if not target.is_file():
            raise AvgkitError(f"{path}: base recipe file not found: {target}")
        return target
    known = packaged_recipes()
    if ref not in known:
        raise AvgkitError(
            f"{path}: base names no recipe {ref!r}{did_you_mean(ref, known)}; give a packaged recipe name "
            f"(`avgkit recipes ls`) or a path ending in .yaml"
        )
    return known[ref]


def read_recipe(path: Path, _chain: tuple[Path, ...] = ()) -> Any:
    """The raw mapping of a recipe file with its ``base:`` chain merged in (``base`` removed).

    ``base`` is one recipe or a list of them, merged in order, then the file's own keys
    on top; a base may have a base. A cycle is refused.
    """
    path = Path(path)
    key = path.resolve()
    if key in _chain:
        cycle = " -> ".join(p.name for p in (*_chain[_chain.index(key):], key))
        raise AvgkitError(f"recipe bases form a cycle: {cycle}; remove one of these base: keys")
    raw = read_yaml(path)
    if not isinstance(raw, dict) or "base" not in raw:
        return raw
    raw = dict(raw)
    refs = raw.pop("base")
    merged: dict[str, Any] = {}
    for ref in refs if isinstance(refs, list) else [refs]:
        parent = read_recipe(_base_path(ref, path), (*_chain, key))
        if not isinstance(parent, dict):
            raise AvgkitError(f"{path}: base {ref!r} is not a recipe mapping")
        merged = merge_recipes(merged, parent)
    return merge_recipes(merged, raw)


def recipe_dirs() -> list[Path]:
    from avgkit.plugins import get_manager

    return [d for d in get_manager().recipe_dirs() if d.is_dir()]


def packaged_recipes() -> dict[str, Path]:
    """Recipe name (file stem) -> path, over every plugin's recipe folders."""
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for p in sorted(d.rglob("*.yaml")):
            found.setdefault(p.stem, p)
    return found


def find_recipe(name_or_path: str) -> Path:
    """A recipe name (packaged) or a file. A bare name is a packaged recipe's even when a
    file or folder of that name is in the working directory; ``./digits`` means the path."""
    p = Path(name_or_path)
    means_path = p.suffix in (".yaml", ".yml") or "/" in name_or_path or name_or_path.startswith(".")
    known = packaged_recipes() if not means_path else {}
    if name_or_path in known:
        return known[name_or_path]
    if means_path or p.exists():
        if not p.exists():
            raise AvgkitError(f"recipe file not found: {p}")
        if p.is_dir():
            raise AvgkitError(f"{p} is a folder, not a recipe file; pass a recipe's .yaml file or a recipe name "
                              f"(`avgkit recipes ls` lists them)")
        return p
    known = known or packaged_recipes()
    raise AvgkitError(
        f"no recipe named {name_or_path!r}{did_you_mean(name_or_path, known)}; `avgkit recipes ls` lists them"
    )


def load_recipe(name_or_path: str, overrides: Sequence[str] = ()) -> Recipe:
    path = find_recipe(name_or_path)
    raw = read_recipe(path)
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides)
    # a mistake may be in the file or in an override: say both were read
    return validate_recipe(raw, f"{path} with {' '.join(overrides)}" if overrides else str(path))


def recipe_changes(old_text: str, recipe: Recipe | dict[str, Any], limit: int = 4) -> str:
    """``key: old -> new`` for the first keys that differ between a stored recipe and ``recipe``."""

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix[:-1]: node}
        return {k: v for key, child in node.items() for k, v in flat(child, f"{prefix}{key}.").items()}

    try:
        before = flat(yaml.safe_load(old_text) or {})
    except yaml.YAMLError:
        return "the stored recipe.yaml was unreadable"
    after = flat(recipe if isinstance(recipe, dict) else recipe.to_dict())
    diff = [f"{k}: {before.get(k)} -> {after.get(k)}" for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k)]
    return ", ".join(diff[:limit]) + (f" and {len(diff) - limit} more" if len(diff) > limit else "")
