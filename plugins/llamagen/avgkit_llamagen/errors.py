"""The error this package raises for user-facing problems (one line: problem and fix)."""

from __future__ import annotations

from avgkit.errors import AvgkitError


class VQError(AvgkitError, ValueError):
    """A bad input, config or weights file for the LlamaGen VQ tokenizer."""
