"""Cross-process write serialisation for an embedded store folder.

Chroma's embedded client is not safe for concurrent writers in several processes (two processes
opening a new store at once can fail, and a long-lived client keeps a stale vector index after
another process wrote). `StoreLock` serialises writers with a file lock (``<root>/.write.lock``) and
keeps a generation counter (``<root>/generation``) that every write bumps, so a reader can tell
that another process changed the store and reopen its client.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

DEFAULT_TIMEOUT_S = 300.0


class StoreLockTimeoutError(RuntimeError):
    """Another process held the store's write lock for longer than the timeout."""


class StoreLock:
    """The write lock and generation counter of one store folder.

    Args:
        root: the store folder (created by the caller).
        timeout_s: how long a writer waits for the lock before `StoreLockTimeoutError`.
    """

    def __init__(self, root: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.root = Path(root)
        self.timeout_s = timeout_s
        self.lock_path = self.root / ".write.lock"
        self.generation_path = self.root / "generation"
        self._lock = FileLock(str(self.lock_path), timeout=timeout_s)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the write lock (re-entrant in the same thread)."""
        try:
            self._lock.acquire()
        except Timeout:
            msg = (
                f"memory store {self.root} is locked by another writer for more than "
                f"{self.timeout_s:.0f} s (lock file {self.lock_path}). Fix: wait for the other "
                "import to finish; if no process is writing, delete the lock file"
            )
            raise StoreLockTimeoutError(msg) from None
        try:
            yield
        finally:
            self._lock.release()

    def generation(self) -> int:
        """The current write generation (0 for a store never written through this lock)."""
        try:
            return int(self.generation_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def bump(self) -> int:
        """Increment the generation (call with the lock held); returns the new value."""
        new = self.generation() + 1
        tmp = self.generation_path.with_name(f"generation.{os.getpid()}.tmp")
        tmp.write_text(str(new))
        os.replace(tmp, self.generation_path)
        return new
