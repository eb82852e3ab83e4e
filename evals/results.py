"""The append-only results log of a run (``results.jsonl``), safe to resume after a SIGKILL.

One JSON object per line: ``image`` (path), ``category``, ``gt_label`` (ground truth 0/1),
``gt_defect_type`` (the test folder's name), ``gt_mask`` (mask path or null), ``repeat``,
``config_hash``, ``references``, then the `Verdict` fields (``pred_label``, ``pred_score``,
``defect_type`` (predicted), ``regions``, ``explanation``, ``evidence``, ``status``, ``error``, ...).
A record's key is (category, image, config_hash, repeat).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Key = tuple[str, str, str, int]


def record_key(record: dict[str, Any]) -> Key:
    """The resume key of a record: (category, image path, config hash, repeat)."""
    return (record["category"], record["image"], record["config_hash"], int(record.get("repeat", 0)))


def repair_tail(path: Path) -> int:
    """Cut a truncated last line (a write killed mid-way) so appends start on a fresh line.

    Returns:
        Bytes removed (0 when the file ends with a newline or does not exist).
    """
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as fh:
        # Read backwards in blocks until the last newline is found.
        block = 65536
        pos = size
        tail = b""
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            tail = fh.read(pos - start) + tail
            idx = tail.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                break
            pos = start
        else:
            keep = 0
        if keep == size:
            return 0
        fh.truncate(keep)
        return size - keep


def iter_records(path: Path, with_offset: bool = False) -> Iterator[Any]:
    """Yield the complete records of a results file (unparsable lines are skipped).

    Args:
        path: results.jsonl.
        with_offset: yield (byte offset of the line, record) pairs instead (see `read_record_at`).
    """
    if not path.exists():
        return
    offset = 0
    with path.open("rb") as fh:
        for line in fh:
            start, offset = offset, offset + len(line)
            if not line.endswith(b"\n"):
                break  # a truncated last line: not a record
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "image" in rec and "category" in rec:
                yield (start, rec) if with_offset else rec


def read_record_at(path: Path, offset: int) -> dict[str, Any]:
    """The record on the line starting at byte `offset`."""
    with path.open("rb") as fh:
        fh.seek(offset)
        return json.loads(fh.readline())


def latest_records(
    path: Path, config_hash: str | None = None, fields: tuple[str, ...] | None = None
) -> dict[Key, dict[str, Any]]:
    """The last record per key (a retried item replaces its earlier error record).

    Args:
        path: results.jsonl.
        config_hash: keep only records of this config (None: all).
        fields: keep only these fields of each record, plus ``_offset`` (its line's byte offset),
            so memory stays small for big runs (None: whole records).
    """
    out: dict[Key, dict[str, Any]] = {}
    for offset, rec in iter_records(path, with_offset=True):
        if config_hash is not None and rec.get("config_hash") != config_hash:
            continue
        key = record_key(rec)
        if fields is not None:
            slim = {k: rec.get(k) for k in fields}
            slim["_offset"] = offset
            rec = slim
        out[key] = rec
    return out


class ResultsLog:
    """Appends records to results.jsonl, one flushed line per record.

    Usage: ``with ResultsLog(path) as log: log.append(record)``. Opening repairs a truncated tail.
    """

    def __init__(self, path: str | Path, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._fh = None

    def __enter__(self) -> ResultsLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(self.path)
        self._fh = self.path.open("ab")
        return self

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line (a single write call) and flush it to the OS."""
        if self._fh is None:
            msg = "ResultsLog.append outside its `with` block"
            raise RuntimeError(msg)
        line = json.dumps(record, default=str, ensure_ascii=False).encode() + b"\n"
        self._fh.write(line)
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
