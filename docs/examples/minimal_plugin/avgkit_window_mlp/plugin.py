"""Hook implementations: what avgkit calls when it loads this plugin."""

from __future__ import annotations

from pathlib import Path

from avgkit import hookimpl

#: the avgkit plugin API this module was written for (a different major is refused)
AVGKIT_API_VERSION = "1.0"


@hookimpl
def avgkit_register_backbones(register):
    # imported here so that `avgkit plugins` stays fast even if the model pulls in a lot
    from avgkit_window_mlp.backbone import WindowMLP, WindowMLPConfig

    register(
        "window-mlp",
        WindowMLP,
        config=WindowMLPConfig,
        presets={"tiny": {"dim": 32, "layers": 2, "window": 4}, "small": {"dim": 128, "layers": 4, "window": 8}},
        description="example: each token predicted by an MLP over a window of the previous ones",
    )


@hookimpl
def avgkit_recipe_dirs():
    return [Path(__file__).parent / "recipes"]
