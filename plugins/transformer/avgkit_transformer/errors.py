"""The error this package raises for user-facing problems (one line: problem and fix)."""

from __future__ import annotations

from avgkit.errors import AvgkitError


class TransformerError(AvgkitError, ValueError):
    """A bad config, conditioning or checkpoint for the transformer backbone."""
