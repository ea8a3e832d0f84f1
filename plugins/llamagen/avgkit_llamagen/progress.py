"""Training progress: a live bar on a terminal, periodic plain lines otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in values.items())


class Progress:
    """``update(step, values)`` after every step; values are shown every ``every`` steps."""

    def __init__(self, total: int, start: int, every: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total, self.every, self.enabled = total, max(1, every), enabled
        self.stream = stream or sys.stderr
        self.start_step, self.start_time = start, time.perf_counter()
        self.bar = None
        if enabled and self.stream.isatty():
            try:  # optional: without tqdm, plain lines as in logs
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=start, file=self.stream, dynamic_ncols=True, desc="vq")

    def update(self, step: int, values: dict[str, float] | None = None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if values is not None:
                self.bar.set_postfix_str(_fmt(values), refresh=False)
            return
        if values is not None:
            done = step - self.start_step
            rate = done / max(time.perf_counter() - self.start_time, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else float("inf")
            print(
                f"step {step}/{self.total} {_fmt(values)} | {rate:.2f} it/s eta {eta:.0f}s",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
