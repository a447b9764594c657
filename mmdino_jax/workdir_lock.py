"""One run per run directory: an exclusive lock on ``<workdir>/.lock``, which records the owner's pid and host.

The lock is an ``fcntl.flock`` on that file, so the kernel drops it when its process dies in any way
(kill -9, a crash): a lock left by a dead process is stale and simply taken over by the next run, and of
two runs starting together exactly one gets it. The second run is refused with the holder's pid and host.
The file stays in place between runs (removing it would let two runs lock two different files).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from mmdino_jax.cli_errors import WorkdirError

LOCK_NAME = ".lock"


class WorkdirLock:
    """Context manager: ``with WorkdirLock(workdir, "training"): ...``. ``enabled=False`` makes it a no-op
    (processes other than 0 of a multi-process run, which share process 0's workdir), as does a URL workdir
    (gs://...: object stores have no file locks)."""

    def __init__(self, workdir: str | os.PathLike, purpose: str = "training", enabled: bool = True):
        self.path = Path(workdir) / LOCK_NAME
        self.purpose, self.enabled = purpose, enabled and "://" not in str(workdir)
        self._fd: int | None = None

    def holder(self) -> dict:
        """What the lock file records: {pid, host, purpose} of its last owner ({} if unreadable)."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        if not self.enabled or self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = self.holder()
            raise WorkdirError(
                f"{self.path.parent} is in use by {owner.get('purpose', 'another run')} (pid {owner.get('pid', '?')} "
                f"on host {owner.get('host', '?')}); wait for it to end, or pass another --workdir") from None
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
