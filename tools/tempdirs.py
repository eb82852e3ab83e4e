"""One temporary folder per process, removed when the process exits.

Every temporary file the package writes (tool maps without an `out_dir`, crops, test weights)
goes under `process_temp_root()`: ``<system temp>/anomaly-agent-<pid>-<random>``. It is removed at
interpreter exit (atexit); folders left by processes that no longer run (killed with SIGKILL) are
removed when the next process makes its own (only when untouched for `STALE_S`, in case the pid
belongs to another pid namespace sharing the temp dir).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

PREFIX = "anomaly-agent-"
STALE_S = 3600.0
_lock = threading.Lock()
_root: Path | None = None
_made: dict[str, deque] = {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove_stale(parent: Path) -> None:
    """Remove ``anomaly-agent-<pid>-*`` folders of processes that are gone."""
    try:
        entries = list(parent.glob(f"{PREFIX}*-*"))
    except OSError:
        return
    for entry in entries:
        pid_text = entry.name[len(PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _alive(int(pid_text)):
            continue
        try:
            if time.time() - entry.stat().st_mtime < STALE_S:
                continue
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)


def process_temp_root() -> Path:
    """This process's temporary folder (made on first use, removed at exit)."""
    global _root
    with _lock:
        if _root is None or not _root.is_dir():
            parent = Path(tempfile.gettempdir())
            _remove_stale(parent)
            _root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
            atexit.register(shutil.rmtree, _root, True)
        return _root


def temp_dir(prefix: str = "run-", keep: int | None = None) -> Path:
    """A new folder inside the process's temporary folder.

    Args:
        prefix: the folder name's start.
        keep: at most this many folders of this prefix made by this process stay: the oldest are removed
            (a long-running process keeps the maps of its last `keep` runs, not of every run). None: all.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=process_temp_root()))
    if keep is not None:
        with _lock:
            made = _made.setdefault(prefix, deque())
            made.append(path)
            while len(made) > keep:
                shutil.rmtree(made.popleft(), ignore_errors=True)
    return path
