"""Official AiM checkpoints -> avgkit_adaln conditioner weights.

The official files wrap the model as ``mamba.`` (keys ``mamba.backbone....``); the
conditioner owns the class table, the adaLN projections and tables, and the final
layer's adaLN. Plain ``backbone.`` keys (no wrapper) are accepted too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from avgkit.convert import ConvertedWeights
from avgkit.errors import AvgkitError


def _root(state_dict: Mapping[str, Tensor]) -> str:
    return "mamba.backbone." if any(k.startswith("mamba.backbone.") for k in state_dict) else "backbone."


def convert_aim(state_dict: Mapping[str, Tensor], name: str, num_layers: int) -> ConvertedWeights:
    root = _root(state_dict)
    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str) -> None:
        if src not in state_dict:
            raise AvgkitError(f"AiM checkpoint lacks {src!r} needed by conditioner {name!r}; is it the right form?")
        out[dst] = state_dict[src]
        used.add(src)

    take(root + "cls_embed.embedding_table.weight", "cls_embed.embedding_table.weight")
    if name == "class-token":
        return ConvertedWeights(out, used)
    for p in ("weight", "bias"):
        take(f"{root}final_layer.adaLN_modulation.1.{p}", f"final_adaLN_modulation.1.{p}")
    if name == "adaln":
        for i in range(num_layers):
            for p in ("weight", "bias"):
                take(f"{root}layers.{i}.adaLN_modulation.1.{p}", f"adaLN_modulation.{i}.1.{p}")
    else:
        for p in ("weight", "bias"):
            take(f"{root}adaln_group.1.{p}", f"adaln_group.1.{p}")
        tables = []
        for i in range(num_layers):
            key = f"{root}layers.{i}.scale_shift_table"
            take(key, "_table")
            tables.append(out.pop("_table").reshape(3, -1))
        out["scale_shift_table"] = torch.stack(tables)
    extra = [k for k in state_dict if k.startswith(root + "layers.") and re.search(r"layers\.(\d+)\.", k)
             and int(re.search(r"layers\.(\d+)\.", k).group(1)) >= num_layers]
    if extra:
        raise AvgkitError(f"AiM checkpoint has more layers than the recipe's {num_layers} (e.g. {extra[0]})")
    return ConvertedWeights(out, used)


def to_aim(state_dict: Mapping[str, Tensor], name: str, num_layers: int, prefix: str = "mamba.backbone.") -> dict[str, Tensor]:
    """The inverse mapping: avgkit conditioner weights in the official key layout."""
    out = {prefix + "cls_embed.embedding_table.weight": state_dict["cls_embed.embedding_table.weight"]}
    if name == "class-token":
        return out
    for p in ("weight", "bias"):
        out[f"{prefix}final_layer.adaLN_modulation.1.{p}"] = state_dict[f"final_adaLN_modulation.1.{p}"]
    if name == "adaln":
        for i in range(num_layers):
            for p in ("weight", "bias"):
                out[f"{prefix}layers.{i}.adaLN_modulation.1.{p}"] = state_dict[f"adaLN_modulation.{i}.1.{p}"]
    else:
        for p in ("weight", "bias"):
            out[f"{prefix}adaln_group.1.{p}"] = state_dict[f"adaln_group.1.{p}"]
        for i in range(num_layers):
            out[f"{prefix}layers.{i}.scale_shift_table"] = state_dict["scale_shift_table"][i][None].clone()
    return out


def convert_llamagen_class_table(state_dict: Mapping[str, Tensor]) -> ConvertedWeights:
    """LlamaGen c2i GPT: ``cls_embedding.embedding_table.weight`` (classes + 1, d), null class last."""
    key = "cls_embedding.embedding_table.weight"
    if key not in state_dict:
        raise AvgkitError(f"LlamaGen GPT checkpoint lacks {key!r}; is it a class-conditional (c2i) model?")
    return ConvertedWeights({"cls_embed.embedding_table.weight": state_dict[key]}, {key})
