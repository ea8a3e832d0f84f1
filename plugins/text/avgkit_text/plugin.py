"""avgkit hook implementations of the text conditioner."""

from __future__ import annotations

from avgkit import hookimpl
from avgkit_text.config import TextConditionerConfig

AVGKIT_API_VERSION = "1.1"


def build_text_conditioner(config, *, dim, num_layers):
    from avgkit_text.conditioner import TextConditioner

    return TextConditioner(config, dim=dim, num_layers=num_layers)


@hookimpl
def avgkit_register_conditioners(register):
    register("text", build_text_conditioner, config=TextConditionerConfig,
             presets={"words": {"encoder": "words"}, "bytes": {"encoder": "bytes"}},
             description="captions -> padded prefix + adaLN-single from the pooled caption; trainable word/byte "
                         "encoder or a frozen local T5 / CLIP text tower")
