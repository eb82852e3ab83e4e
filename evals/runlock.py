"""One writer per run directory: an exclusive lock on ``<run>/.run.lock`` holding the writer's pid.

Two `eval --resume` processes on one directory would judge the same items twice and could cut each
other's lines in results.jsonl. The lock is an OS advisory lock (`fcntl.flock`), released by the
kernel when its holder exits (even on SIGKILL), so a crashed run never leaves a stale lock behind;
the pid written into the file only names the holder in the error message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from agent.errors import UserInputError

LOCK_NAME = ".run.lock"


class RunDirLockedError(UserInputError):
    """Another process holds the run directory's lock; the message names its pid."""


class RunDirLock:
    """Hold ``<root>/.run.lock`` for the lifetime of a `with` block (non-blocking).

    Raises (on enter):
        RunDirLockedError: another process (or another open lock in this one) holds it.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            msg = (
                f"run directory {self.root} is in use by another eval (pid {holder}). "
                "Fix: wait for it to finish (or stop it), or choose another --out"
            )
            raise RunDirLockedError(msg) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
