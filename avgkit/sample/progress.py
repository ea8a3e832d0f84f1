"""Progress of a sampling job: a bar on a terminal, plain lines in logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class SampleProgress:
    """Counts images; draws a rich bar when ``stream`` is a TTY, else prints one line per shard."""

    def __init__(self, total: int, *, label: str = "sampling", stream: TextIO | None = None,
                 bar: bool | None = None, enabled: bool = True) -> None:
        self.total, self.label, self.done = total, label, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.start = time.perf_counter()
        use_bar = self.stream.isatty() if bar is None else bar
        self._bar = None
        if enabled and use_bar and total > 0:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                 console=Console(file=self.stream), transient=False)
            self._task = self._bar.add_task(label, total=total, rate="")
            self._bar.start()

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def say(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(message)
        else:
            print(message, file=self.stream, flush=True)

    def advance(self, n: int, note: str = "") -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{self.rate:.1f} img/s")
        else:
            left = (self.total - self.done) / self.rate if self.rate > 0 else float("nan")
            eta = f", {left / 60:.1f} min left" if left == left else ""
            print(f"{self.label}: {self.done}/{self.total} images ({self.rate:.1f} img/s{eta}){note}",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
