"""Bounded folders: the oldest sub-folders beyond a count go (runs, uploaded reference sets, chat sessions)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path


def touch(folder: Path) -> None:
    """Mark a folder as just used (pruning goes by modification time)."""
    try:
        os.utime(folder)
    except OSError:
        pass


def prune_oldest(root: Path, keep: int, name: re.Pattern) -> list[str]:
    """Remove the oldest sub-folders of `root` whose names fullmatch `name`, beyond the newest `keep`; returns
    the names removed (others, e.g. temporary ones, are left alone)."""
    folders = []
    for path in root.iterdir() if root.is_dir() else []:
        if name.fullmatch(path.name) and path.is_dir():
            try:
                folders.append((path.stat().st_mtime, path))
            except OSError:
                continue
    if len(folders) <= keep:
        return []
    folders.sort()
    removed = []
    for _, path in folders[: len(folders) - keep]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed
