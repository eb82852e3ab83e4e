"""Progress on stderr for anything that takes more than a second.

`activity(label)`: a context manager whose heartbeat thread says how long a step has been running
(after `MIN_S` seconds; on a terminal one line rewritten every half second, otherwise a line every
`PIPE_EVERY_S` seconds), and, when it ran longer than `MIN_S`, one closing line with the total time.
`Counter`: "progress: 3/10 images, 12.3 s, about 28 s left" lines for a batch, once it has run for
`MIN_S`. Every line starts with "progress:" so it is easy to tell apart from results and errors.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

MIN_S = 1.0
PIPE_EVERY_S = 10.0


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _write(stream, text: str, tty: bool, final: bool = False) -> None:
    try:
        if tty:
            stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):  # a closed or broken stderr must not break the work
        pass


@contextmanager
def activity(label: str, done: str = "done", stream=None):
    """Report `label` while the block runs longer than `MIN_S`; `done` ends the closing line.

    Yields a dict; set ``info["done"]`` inside the block to change the closing words.
    """
    stream = stream or sys.stderr
    tty = _is_tty(stream)
    start = time.monotonic()
    stop = threading.Event()
    info = {"done": done, "printed": False}

    def beat() -> None:
        wait = MIN_S
        while not stop.wait(wait):
            _write(stream, f"progress: {label} ({time.monotonic() - start:.0f} s)", tty)
            info["printed"] = True
            wait = 0.5 if tty else PIPE_EVERY_S

    thread = threading.Thread(target=beat, name="progress", daemon=True)
    thread.start()
    try:
        yield info
    finally:
        stop.set()
        thread.join()
        elapsed = time.monotonic() - start
        if elapsed >= MIN_S:
            _write(stream, f"progress: {label}: {info['done']} in {elapsed:.1f} s", tty, final=True)


class Counter:
    """Counts finished items of a batch and reports after each, once the batch has run for `MIN_S`
    (on a pipe at most every `PIPE_EVERY_S` seconds, and always the last)."""

    def __init__(self, total: int, unit: str = "images", stream=None) -> None:
        self.total, self.unit = total, unit
        self.stream = stream or sys.stderr
        self.tty = _is_tty(self.stream)
        self.start = time.monotonic()
        self.done = 0
        self._last = 0.0

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        elapsed = now - self.start
        last = self.done == self.total
        if self.total < 2 or elapsed < MIN_S or (not last and now - self._last < (1.0 if self.tty else PIPE_EVERY_S)):
            return
        self._last = now
        left = elapsed / self.done * (self.total - self.done)
        tail = f", about {left:.0f} s left" if not last else ""
        _write(self.stream, f"progress: {self.done}/{self.total} {self.unit}, {elapsed:.1f} s{tail}", False)
