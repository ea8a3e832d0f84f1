"""One writer per folder: an OS file lock that records who holds it.

A run directory (or a sampling folder) is locked with ``flock`` on a ``.lock`` file in
it. The kernel releases the lock when its holder exits, however it exits (``kill -9``
included), so a lock is never left behind to delete by hand. The file holds the host,
process id and start time of the holder: a second writer is refused with a line that
names them, and a writer that finds the file filled in but unlocked knows the previous
one ended without finishing and says so.

Network file systems: NFSv4 and most cluster file systems (Lustre, GPFS, BeeGFS with
locking enabled) pass ``flock`` between hosts; NFSv3 mounted with ``nolock`` and some
FUSE mounts lock on one host only, so two hosts could then both write. Where the file
system refuses locks altogether the error says so; ``AVGKIT_NO_LOCK=1`` then runs
without a lock (make sure yourself that one process writes the folder).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from avgkit.errors import AvgkitError
from avgkit.runs.layout import LOCK_FILE


class LockedError(AvgkitError):
    """Another live process holds the folder's lock."""


def _holder(text: str) -> str:
    parts = dict(p.split("=", 1) for p in text.split() if "=" in p)
    if not parts:
        return "another process"
    since = parts.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(since))) if since else "?"
    return f"pid {parts.get('pid', '?')} on {parts.get('host', '?')}, since {when}"


class FolderLock:
    """Exclusive right to write ``folder`` (a context manager; :meth:`acquire` / :meth:`release`).

    ``what`` names the folder in messages (``run``, ``sampling folder``).
    """

    def __init__(self, folder: str | Path, what: str = "run") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self._fd: int | None = None
        #: the previous holder when it ended without releasing the lock (killed), else None
        self.stale: str | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        if os.environ.get("AVGKIT_NO_LOCK"):
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockedError(
                    f"{self.what} {self.folder} is being written by {_holder(text)}; wait for it to finish or stop "
                    f"it (a process that is gone releases the lock by itself)"
                ) from None
            raise AvgkitError(
                f"cannot lock {self.path} ({err.strerror}): the file system does not support locks; set "
                f"AVGKIT_NO_LOCK=1 to run without one and make sure a single process writes {self.folder}"
            ) from None
        old = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if old:
            self.stale = _holder(old)
            print(f"note: {self.what} {self.folder} was last written by {self.stale}, which ended without "
                  f"finishing (killed?); continuing", file=sys.stderr, flush=True)
        record = f"host={socket.gethostname()} pid={os.getpid()} since={time.time():.0f}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Clear the record (a clean exit) and unlock."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


__all__ = ["LOCK_FILE", "FolderLock", "LockedError"]
