"""Hook implementations: what avgkit calls when it loads this plugin."""

from __future__ import annotations

from pathlib import Path

from avgkit import hookimpl

#: the avgkit plugin API this module was written for (another major, or a newer minor, is refused)
AVGKIT_API_VERSION = "1.1"


@hookimpl
def avgkit_register_backbones(register):
    # "module:attr" strings: imported when the backbone is first built, so that
    # `avgkit --help`, `avgkit ls` and `avgkit plugins` never import torch for it
    register(
        "window-mlp",
        "avgkit_window_mlp.backbone:WindowMLP",
        config="avgkit_window_mlp.backbone:WindowMLPConfig",
        presets={"tiny": {"dim": 32, "layers": 2, "window": 4}, "small": {"dim": 128, "layers": 4, "window": 8}},
        description="example: each token predicted by an MLP over a window of the previous ones",
    )


@hookimpl
def avgkit_recipe_dirs():
    return [Path(__file__).parent / "recipes"]
