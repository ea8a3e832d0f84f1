"""Official AiM checkpoints -> avgkit_mamba backbone weights.

Official files hold ``mamba.backbone.*`` (the stack) and ``mamba.lm_head.weight``
(tied to the token table, and often absent); the class table and adaLN weights
belong to the conditioner and are left to its plugin.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from avgkit.convert import ConvertedWeights
from avgkit.errors import AvgkitError

_OWN = re.compile(r"^(embeddings\.|norm_f\.|final_layer\.norm_final\.|layers\.\d+\.(norm|mixer)\.)")


def convert_aim(state_dict: Mapping[str, Tensor], tie_embeddings: bool = True) -> ConvertedWeights:
    wrap = "mamba." if any(k.startswith("mamba.") for k in state_dict) else ""
    root = wrap + "backbone."
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, value in state_dict.items():
        if key.startswith(root) and _OWN.match(key[len(root):]):
            out[key[len(root):]] = value
            used.add(key)
    if not out:
        raise AvgkitError(f"no AiM backbone weights found (expected keys under {root!r})")
    head = wrap + "lm_head.weight"
    if head in state_dict:
        used.add(head)
        if tie_embeddings:
            emb = out.get("embeddings.word_embeddings.weight")
            if emb is not None and not emb.is_meta and not bool((state_dict[head] == emb).all()):
                raise AvgkitError("lm_head.weight differs from the token table but the backbone ties them; set tie_embeddings: false")
        else:
            out["lm_head.weight"] = state_dict[head]
    return ConvertedWeights(out, used)


def to_aim(state_dict: Mapping[str, Tensor], prefix: str = "mamba.") -> dict[str, Tensor]:
    """The inverse mapping (official key layout), with the tied head stored explicitly."""
    out = {prefix + "backbone." + k: v for k, v in state_dict.items() if k != "lm_head.weight"}
    out[prefix + "lm_head.weight"] = state_dict.get("lm_head.weight", state_dict["embeddings.word_embeddings.weight"])
    return out
