"""avgkit hook implementations: the Mamba-2 (AiM) backbone."""

from __future__ import annotations

from avgkit import hookimpl

AVGKIT_API_VERSION = "1.1"


@hookimpl
def avgkit_register_backbones(register):
    from avgkit_mamba.backbone import MambaBackbone, MambaBackboneConfig
    from avgkit_mamba.presets import PRESETS

    register("mamba2", MambaBackbone, config=MambaBackboneConfig, presets=PRESETS,
             description="AiM: Mamba-2 blocks with adaLN modulation, learned positions, tied head")


@hookimpl
def avgkit_convert_checkpoint(source, state_dict, role, name, config):
    if source != "aim" or role != "backbone" or name != "mamba2":
        return None
    from avgkit_mamba.convert import convert_aim

    return convert_aim(state_dict, tie_embeddings=config.tie_embeddings)


@hookimpl
def avgkit_checkpoint_formats():
    return ["aim"]
