"""Example avgkit plugin: the ``window-mlp`` backbone."""

__all__ = ["WindowMLP", "WindowMLPConfig"]


def __getattr__(name: str):
    # avgkit imports avgkit_window_mlp.plugin on every start (`avgkit --help` too): the
    # package must not import torch until the model is used
    if name in __all__:
        from avgkit_window_mlp import backbone

        return getattr(backbone, name)
    raise AttributeError(f"module 'avgkit_window_mlp' has no attribute {name!r}")
