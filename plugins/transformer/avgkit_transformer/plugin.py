"""avgkit hook implementations: the ``transformer`` backbone and LlamaGen GPT conversion."""

from __future__ import annotations

from avgkit import hookimpl
from avgkit_transformer.config import PRESETS, TransformerConfig

AVGKIT_API_VERSION = "1.1"

NAME = "transformer"


@hookimpl
def avgkit_register_backbones(register):
    from avgkit_transformer.model import TransformerBackbone

    register(
        NAME,
        TransformerBackbone,
        config=TransformerConfig,
        presets=PRESETS,
        description="LlamaGen-style GPT: RMSNorm, SwiGLU, 2D RoPE, KV cache; honours adaLN modulation",
    )


@hookimpl
def avgkit_convert_checkpoint(source, state_dict, role, name, config):
    """The backbone's part of a LlamaGen c2i GPT checkpoint (an ``avgkit.convert.ConvertedWeights``)."""
    from avgkit_transformer.convert import SOURCE, convert_llamagen_gpt

    if source != SOURCE or role != "backbone" or name != NAME:
        return None
    return convert_llamagen_gpt(state_dict, config)


@hookimpl
def avgkit_checkpoint_formats():
    return ["llamagen-gpt"]
