"""avgkit hook implementations: the LlamaGen VQ tokenizer and its trainer."""

from __future__ import annotations

from avgkit import hookimpl

AVGKIT_API_VERSION = "1.1"
NAME = "llamagen-vq"


@hookimpl
def avgkit_register_tokenizers(register):
    from avgkit_llamagen.config import VQConfig
    from avgkit_llamagen.presets import PRESETS  # plain data; the model loads when built

    register(NAME, "avgkit_llamagen.presets:build_tokenizer", config=VQConfig, presets=PRESETS,
             description="LlamaGen VQ (l2-normalised codebook): vq-16 (AiM), vq-8, digits")


@hookimpl
def avgkit_register_tokenizer_trainers(register):
    register(NAME, "avgkit_llamagen.train:train_vq", config="avgkit_llamagen.train:VQTrainConfig")


@hookimpl
def avgkit_convert_checkpoint(source, state_dict, role, name, config):
    """LlamaGen's ``vq_ds16_c2i.pt`` (weights under ``model``) or AiM's ``vqvae.*`` entries."""
    if role != "tokenizer" or name != NAME or source not in ("llamagen-vq", "aim"):
        return None
    from avgkit.convert import ConvertedWeights
    from avgkit_llamagen.loading import convert_state_dict

    prefix = "vqvae." if source == "aim" else ""
    part = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    own = convert_state_dict(part, config)
    if own is None:
        return None
    consumed = {prefix + k for k in part if k in own}
    return ConvertedWeights(own, consumed)


@hookimpl
def avgkit_checkpoint_formats():
    return ["llamagen-vq", "aim"]
