"""User-facing errors: one line naming the problem and the fix.

The CLI prints ``AvgkitError`` messages without a traceback and exits with code 2
(set ``AVGKIT_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AvgkitError(Exception):
    """A problem in the user's input (recipe, plugin name, file, argument)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or a list of choices."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if choices and len(choices) <= 12:
        return f" (choose from: {', '.join(choices)})"
    return ""
