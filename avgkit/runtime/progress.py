"""Progress of any step loop: a bar on a terminal (tqdm where installed), plain lines in logs.

Trainers (avgkit's own and plugins') report through one class, so every run looks alike
on a terminal and in a log file, and a log gets a line only when there is news.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import TextIO


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fmt(values: Mapping[str, float | str]) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


class StepProgress:
    """``update(step, values)`` after every step; ``values`` (on logged steps) are shown.

    On a terminal a bar moves every step and shows the latest values; elsewhere a line
    ``desc step/total  values  eta`` is printed whenever values are given.
    """

    def __init__(self, total: int, initial: int = 0, *, desc: str = "", unit: str = "step", enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.total, self.initial, self.desc = total, initial, desc
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.bar = None
        self.t0 = time.monotonic()
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            try:  # optional: without tqdm, plain lines as in logs
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, desc=desc or None, unit=unit, file=self.stream,
                                dynamic_ncols=True)

    def update(self, step: int, values: Mapping[str, float | str] | None = None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if values is not None:
                self.bar.set_postfix_str(_fmt(values), refresh=False)
            return
        if values is not None:
            rate = (step - self.initial) / max(time.monotonic() - self.t0, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else float("inf")
            head = f"{self.desc} step" if self.desc else "step"
            print(f"{head} {step}/{self.total}  {_fmt(values)}  eta {format_duration(eta)}", file=self.stream,
                  flush=True)

    def write(self, message: str) -> None:
        """A message that does not break the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
