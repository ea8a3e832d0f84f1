"""avgkit hook implementations of the adaLN conditioner family."""

from __future__ import annotations

from avgkit import hookimpl

AVGKIT_API_VERSION = "1.1"
_C = "avgkit_adaln.conditioner"  # imported when a conditioner is built, not at registration

NAMES = ("adaln", "adaln-group", "adaln-single", "class-token")


@hookimpl
def avgkit_register_conditioners(register):
    register("adaln", f"{_C}:AdaLNConditioner", config=f"{_C}:AdaLNConfig", presets={"imagenet": {"num_classes": 1000}},
             description="per-layer adaLN: a zero-initialised projection per block (AiM-B)")
    register("adaln-group", f"{_C}:AdaLNGroupConditioner", config=f"{_C}:AdaLNGroupConfig",
             presets={"imagenet": {"num_classes": 1000, "groups": 4}},
             description="adaLN-group(G): one shared projection to G sets, block i uses set i mod G plus its table")
    register("adaln-single", f"{_C}:AdaLNGroupConditioner", config=f"{_C}:AdaLNSingleConfig",
             presets={"imagenet": {"num_classes": 1000}},
             description="adaLN-single: one shared projection for every block plus per-block tables")
    register("class-token", f"{_C}:ClassTokenConditioner", config=f"{_C}:ClassTokenConfig",
             presets={"imagenet": {"num_classes": 1000}},
             description="class embedding as the first token only, no modulation (in-context, LlamaGen)")


@hookimpl
def avgkit_convert_checkpoint(source, state_dict, role, name, config, num_layers):
    if role != "conditioner" or name not in NAMES:
        return None
    if source == "aim":
        from avgkit_adaln.convert import convert_aim

        return convert_aim(state_dict, name, num_layers)
    if source == "llamagen-gpt" and name == "class-token":
        from avgkit_adaln.convert import convert_llamagen_class_table

        return convert_llamagen_class_table(state_dict)
    return None


@hookimpl
def avgkit_checkpoint_formats():
    return ["aim", "llamagen-gpt"]
