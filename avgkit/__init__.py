"""avgkit: a plugin toolkit for autoregressive visual generation."""

from avgkit.hookspecs import API_VERSION, hookimpl

__version__ = "0.1.0"

__all__ = ["API_VERSION", "__version__", "hookimpl"]
