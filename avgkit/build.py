"""Build a recipe's components through the registry and check that they agree."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from avgkit.errors import AvgkitError
from avgkit.interfaces import Backbone, Conditioner, Sampler, Tokenizer
from avgkit.recipe import ComponentRef, Recipe
from avgkit.registry import Registry


class ARModel(nn.Module):
    """Backbone + conditioner: the trainable part of an AR generator.

    Its state dict is ``backbone.*`` and ``conditioner.*``, so checkpoints and
    parameter counts split cleanly by role.
    """

    def __init__(self, backbone: Backbone, conditioner: Conditioner) -> None:
        super().__init__()
        self.backbone = backbone
        self.conditioner = conditioner
        #: ``forward(..., loss=True)`` forms the logits by chunks where the backbone allows it
        self.fused_loss = True
        #: the chunked loss's softmax gradient as one compiled kernel on a GPU (the trainer turns it on with compiled
        #: blocks: 1.08x AiM-B's and 1.03x AiM-L's compiled step on an H100, row compile-blocks-loss)
        self.compile_loss = False

    def forward(self, codes: torch.Tensor, labels: torch.Tensor, *, loss: bool = False) -> torch.Tensor:
        """Logits (B, N, V); with ``loss=True`` the mean cross-entropy of ``codes`` under teacher forcing.

        The loss comes from the logits formed by chunks (never all at once) when the
        backbone exposes its head (``head_features``), else from the full logits.
        """
        cond = self.conditioner(labels)
        if not loss:
            return self.backbone(codes, cond)
        if self.fused_loss and callable(getattr(self.backbone, "head_features", None)):
            from avgkit.losses import linear_cross_entropy

            hidden, weight = self.backbone.head_features(codes, cond)
            check_logits_shape(hidden, codes, "head features")
            return linear_cross_entropy(hidden, weight, codes, compiled=self.compile_loss)
        logits = self.backbone(codes, cond)
        check_logits_shape(logits, codes, "logits")
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), codes.flatten())

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [*self.backbone.embedding_parameters(), *self.conditioner.embedding_parameters()]


def check_logits_shape(out: torch.Tensor, codes: torch.Tensor, what: str = "logits") -> None:
    if out.shape[:2] != codes.shape:
        raise AvgkitError(
            f"the backbone returned {what} of shape {tuple(out.shape)} for codes {tuple(codes.shape)}; "
            f"it must return (B, N, ...) with one row per image token"
        )


@dataclass
class Components:
    tokenizer: Tokenizer
    backbone: Backbone
    conditioner: Conditioner
    sampler: Sampler
    configs: dict[str, BaseModel]

    @property
    def model(self) -> ARModel:
        return ARModel(self.backbone, self.conditioner)


def resolve_config(registry: Registry, role: str, ref: ComponentRef, *, source: str = "the tokenizer",
                   **fill: Any) -> BaseModel:
    """Validate a component's options; ``fill`` sets fields the recipe left unset (from ``source``)."""
    spec = registry.get(role, ref.name)
    cfg = spec.resolve(ref.preset, ref.options)
    updates = {}
    for key, value in fill.items():
        if key not in type(cfg).model_fields:
            continue
        current = getattr(cfg, key)
        if value is None:
            continue
        if current is None:
            updates[key] = value
        elif current != value:
            raise AvgkitError(
                f"{role} {ref.name!r} has {key}={current} but {source} gives {value}; "
                f"remove {role}.{key} from the recipe or make them agree"
            )
    return cfg.model_copy(update=updates) if updates else cfg


def resolved_recipe_dict(recipe: Recipe, registry: Registry | None = None) -> dict[str, Any]:
    """The recipe with nothing left to defaults: every component option spelled out, ``null`` kept.

    This is what a run stores as ``recipe.yaml``, so that a plugin whose defaults or
    presets change later does not silently change what an old run means. The preset
    name is kept for the reader; the explicit options override whatever it says then.
    """
    import yaml

    if registry is None:
        from avgkit.plugins import get_registry

        registry = get_registry()
    out = recipe.model_dump(mode="json")
    for role in ("tokenizer", "backbone", "conditioner", "sampler"):
        ref: ComponentRef = getattr(recipe, role)
        cfg = resolve_config(registry, role, ref)
        entry: dict[str, Any] = {"name": ref.name}
        if ref.preset:
            entry["preset"] = ref.preset
        entry.update(cfg.model_dump(mode="json"))
        if ref.train is not None:
            train = ref.train
            if ref.name in registry.names("tokenizer_trainer"):
                train = registry.get("tokenizer_trainer", ref.name).resolve(None, ref.train).model_dump(mode="json")
            entry["train"] = train
        out[role] = entry
    yaml.safe_dump(out)  # fails here, not later, on a value YAML cannot hold
    return out


def resolved_recipe_yaml(recipe: Recipe, registry: Registry | None = None) -> str:
    import yaml

    return yaml.safe_dump(resolved_recipe_dict(recipe, registry), sort_keys=False)


def _make(role: str, name: str, factory: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a component factory; a ``ValueError`` it raises about its options is a one-line error."""
    try:
        return factory(*args, **kwargs)
    except ValueError as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise AvgkitError(f"{role} {name!r} cannot be built with these options: {detail}; change them in the "
                          f"recipe (`avgkit ls {role}s --options` lists them)") from None


def build(recipe: Recipe, *, device: str | torch.device = "cpu", registry: Registry | None = None) -> Components:
    """Build every component; ``device="meta"`` allocates nothing (for ``--dry-run``)."""
    if registry is None:
        from avgkit.plugins import get_registry

        registry = get_registry()
    from avgkit.loggers import check_loggers

    check_loggers(recipe, registry)  # a misspelt logger fails now, not after the data is prepared
    ctx = torch.device(device) if str(device) == "meta" else contextlib.nullcontext()
    tok_cfg = resolve_config(registry, "tokenizer", recipe.tokenizer)
    with ctx:
        tokenizer = _make("tokenizer", recipe.tokenizer.name, registry.get("tokenizer", recipe.tokenizer.name).factory,
                          tok_cfg)
    # grid_width: the token grid's columns, for backbones whose config has the field (2D positions)
    bb_cfg = resolve_config(
        registry, "backbone", recipe.backbone, vocab_size=tokenizer.codebook_size, num_tokens=tokenizer.num_tokens,
        grid_width=tokenizer.grid[1],
    )
    cond_cfg = resolve_config(registry, "conditioner", recipe.conditioner, source="data.num_classes",
                              num_classes=recipe.data.num_classes if recipe.data else None)
    if getattr(cond_cfg, "num_classes", 0) is None:
        raise AvgkitError(f"conditioner {recipe.conditioner.name!r} needs the number of classes: set data.num_classes "
                          f"(or conditioner.num_classes) in the recipe")
    samp_cfg = resolve_config(registry, "sampler", recipe.sampler)
    with ctx:
        backbone = _make("backbone", recipe.backbone.name, registry.get("backbone", recipe.backbone.name).factory,
                         bb_cfg)
        conditioner = _make("conditioner", recipe.conditioner.name,
                            registry.get("conditioner", recipe.conditioner.name).factory,
                            cond_cfg, dim=backbone.dim, num_layers=backbone.num_layers)
    sampler = _make("sampler", recipe.sampler.name, registry.get("sampler", recipe.sampler.name).factory, samp_cfg)
    for role, built, base in (("tokenizer", tokenizer, Tokenizer), ("backbone", backbone, Backbone),
                              ("conditioner", conditioner, Conditioner)):
        if not isinstance(built, base):
            spec = registry.get(role, getattr(recipe, role).name)
            raise AvgkitError(
                f"{role} {spec.name!r} (plugin {spec.plugin!r}) built a {type(built).__name__}, which does not subclass "
                f"avgkit.interfaces.{base.__name__}; its class must subclass it (see the plugin guide, docs/plugins.md)"
            )
    check_agreement(tokenizer, backbone, conditioner)
    if str(device) != "meta":
        tokenizer.to(device)
        backbone.to(device)
        conditioner.to(device)
    configs = {"tokenizer": tok_cfg, "backbone": bb_cfg, "conditioner": cond_cfg, "sampler": samp_cfg}
    return Components(tokenizer, backbone, conditioner, sampler, configs)


def check_agreement(tokenizer: Tokenizer, backbone: Backbone, conditioner: Conditioner) -> None:
    if backbone.vocab_size != tokenizer.codebook_size:
        raise AvgkitError(
            f"backbone vocabulary {backbone.vocab_size} != tokenizer codebook {tokenizer.codebook_size}"
        )
    if backbone.num_tokens != tokenizer.num_tokens:
        raise AvgkitError(f"backbone sequence length {backbone.num_tokens} != tokenizer tokens {tokenizer.num_tokens}")
    if conditioner.dim != backbone.dim:
        raise AvgkitError(f"conditioner width {conditioner.dim} != backbone width {backbone.dim}")


def _unique(params: Any) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for p in params:
        seen.setdefault(id(p), p)
    return list(seen.values())


def parameter_counts(components: Components) -> dict[str, int]:
    """Model parameters (backbone + conditioner; a tied head counted once).

    ``non_embedding`` leaves out the token, position and class tables; the tokenizer
    is counted separately.
    """
    model = _unique([*components.backbone.parameters(), *components.conditioner.parameters()])
    emb = {id(p) for p in [*components.backbone.embedding_parameters(), *components.conditioner.embedding_parameters()]}
    return {
        "total": sum(p.numel() for p in model),
        "non_embedding": sum(p.numel() for p in model if id(p) not in emb),
        "backbone": sum(p.numel() for p in _unique(components.backbone.parameters())),
        "conditioner": sum(p.numel() for p in _unique(components.conditioner.parameters())),
        "tokenizer": sum(p.numel() for p in _unique(components.tokenizer.parameters())),
    }
