"""Converting LlamaGen's official class-conditional GPT checkpoints (source ``"llamagen-gpt"``).

The official ``c2i_*.pt`` files hold the model's state dict under ``"model"``
(``"module"`` / ``"state_dict"`` in some training setups). Their keys map one to one::

    tok_embeddings.weight                  -> tok_embed.weight
    layers.{i}.attention_norm.weight       -> blocks.{i}.attn_norm.weight
    layers.{i}.attention.wqkv.weight       -> blocks.{i}.attn.qkv.weight
    layers.{i}.attention.wo.weight         -> blocks.{i}.attn.proj.weight
    layers.{i}.ffn_norm.weight             -> blocks.{i}.ffn_norm.weight
    layers.{i}.feed_forward.w1.weight      -> blocks.{i}.ffn.gate.weight
    layers.{i}.feed_forward.w3.weight      -> blocks.{i}.ffn.up.weight
    layers.{i}.feed_forward.w2.weight      -> blocks.{i}.ffn.down.weight
    norm.weight                            -> norm_f.weight
    output.weight                          -> head.weight

``cls_embedding.embedding_table.weight`` (``(num_classes + 1, dim)``, last row = null
class) belongs to the conditioner and is left to the plugin that registered it
(it is not in this plugin's ``consumed`` keys). Derived tables that some files carry
(``freqs_cis``, ``causal_mask``, KV-cache buffers) are consumed and dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from avgkit.convert import ConvertedWeights
from avgkit_transformer.config import TransformerConfig
from avgkit_transformer.errors import TransformerError

SOURCE = "llamagen-gpt"
CONDITIONER_KEY = "cls_embedding.embedding_table.weight"
_IGNORED = re.compile(r"^(freqs_cis|causal_mask|layers\.\d+\.attention\.kv_cache\.[kv]_cache)$")
_LAYER = re.compile(r"^layers\.(\d+)\.")
_WRAPPERS = ("model", "module", "state_dict")
_PREFIXES = ("module.", "_orig_mod.")

_GLOBAL = {"tok_embeddings.weight": "tok_embed.weight", "norm.weight": "norm_f.weight", "output.weight": "head.weight"}
_PER_LAYER = {
    "attention_norm.weight": "attn_norm.weight",
    "attention.wqkv.weight": "attn.qkv.weight",
    "attention.wo.weight": "attn.proj.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "feed_forward.w1.weight": "ffn.gate.weight",
    "feed_forward.w3.weight": "ffn.up.weight",
    "feed_forward.w2.weight": "ffn.down.weight",
}


def key_map(num_layers: int) -> dict[str, str]:
    """LlamaGen key -> this backbone's key, for ``num_layers`` blocks."""
    out = dict(_GLOBAL)
    for i in range(num_layers):
        out.update({f"layers.{i}.{theirs}": f"blocks.{i}.{ours}" for theirs, ours in _PER_LAYER.items()})
    return out


def _flatten(state_dict: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """LlamaGen key -> (key as given, value): unwraps ``{"model": ...}``, strips DDP/compile prefixes."""
    for wrapper in _WRAPPERS:
        inner = state_dict.get(wrapper)
        if isinstance(inner, Mapping):
            state_dict = inner
            break
    out = {}
    for given, value in state_dict.items():
        key = given
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = (given, value)
    return out


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def expected_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of this backbone's state dict for ``config`` (built on the meta device)."""
    from avgkit_transformer.model import TransformerBackbone

    with torch.device("meta"):
        model = TransformerBackbone(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_llamagen_gpt(state_dict: Mapping[str, Any], config: TransformerConfig) -> ConvertedWeights:
    """This backbone's weights from a LlamaGen c2i GPT state dict, and the keys they came from.

    Raises :class:`TransformerError` naming missing or mis-shaped LlamaGen keys, and
    keys of layers beyond ``config.layers``. Other keys are left unconsumed: the class
    table belongs to the conditioner, and the core reports keys nobody consumed.
    """
    source = _flatten(state_dict)
    mapping = key_map(config.layers)
    deeper = sorted(k for k in source if (m := _LAYER.match(k)) and int(m.group(1)) >= config.layers)
    if deeper:
        raise TransformerError(
            f"llamagen-gpt checkpoint has more than {config.layers} layers ({_names(deeper, 2)}); pick a larger preset"
        )
    missing = sorted(k for k in mapping if k not in source)
    if missing:
        raise TransformerError(
            f"llamagen-gpt checkpoint lacks {_names(missing)}; is it a LlamaGen c2i GPT with {config.layers} layers?"
        )
    shapes = expected_shapes(config)
    out: dict[str, Tensor] = {}
    consumed = {given for key, (given, _) in source.items() if _IGNORED.match(key)}
    wrong = []
    for theirs, ours in mapping.items():
        given, tensor = source[theirs]
        if not isinstance(tensor, Tensor):
            raise TransformerError(f"llamagen-gpt checkpoint entry {given!r} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != shapes[ours]:
            wrong.append(f"{theirs} {tuple(tensor.shape)} (expected {shapes[ours]})")
        out[ours] = tensor
        consumed.add(given)
    if wrong:
        raise TransformerError(
            f"llamagen-gpt checkpoint shapes differ from this transformer: {_names(wrong, 4)}; "
            "choose the preset (gpt-b, gpt-l, ...) and tokenizer the checkpoint was trained with"
        )
    if config.tie_head and not torch.equal(out["head.weight"], out["tok_embed.weight"]):
        raise TransformerError("llamagen-gpt checkpoint has an untied output head; set backbone tie_head: false")
    return ConvertedWeights(out, consumed)
