"""Stop at the next safe point on SIGINT, SIGTERM or SIGUSR1 instead of losing work.

Clusters send SIGTERM (or SIGUSR1, e.g. Slurm's ``--signal``) before they preempt a
job, and Ctrl-C sends SIGINT. Inside :class:`StopSignals` the first of these only sets
a flag; the work loop checks it at each safe point (a training step, an encoded chunk,
a sampled shard), saves what it has and raises :class:`Interrupted`, which the CLI
prints as one line before exiting with ``128 + signal number``. A second Ctrl-C quits
at once (``KeyboardInterrupt``).

Under ``torchrun`` a signal may reach one process only: :meth:`StopSignals.agreed`
combines every rank's flag (an all-reduce over a CPU group), so all ranks stop at the
same step.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

from avgkit.errors import AvgkitError

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None)


class Interrupted(AvgkitError):
    """Work stopped on a signal after saving what it had; ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """Catch the stop signals while the ``with`` block runs (in the main thread only).

    ``what`` is said when a signal arrives (``"saving a checkpoint after this step"``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._group: Any = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        again = "; press Ctrl-C again to quit at once" if signum == signal.SIGINT else ""
        print(f"\n{signal_name(signum)} received: {self.what}{again}", file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old.clear()

    def agreed(self, env: Any = None, group: Any = None) -> int | None:
        """The signal to stop on when any rank got one (every rank must call this together)."""
        if env is None or not getattr(env, "distributed", False):
            return self.signum
        import torch
        import torch.distributed as dist

        flag = torch.tensor([self.signum or 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        value = int(flag.item())
        if value and self.signum is None:
            self.signum = value
        return value or None


__all__ = ["SIGNALS", "Interrupted", "StopSignals", "signal_name"]
