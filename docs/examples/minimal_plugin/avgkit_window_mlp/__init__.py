"""Example avgkit plugin: the ``window-mlp`` backbone."""

from avgkit_window_mlp.backbone import WindowMLP, WindowMLPConfig

__all__ = ["WindowMLP", "WindowMLPConfig"]
