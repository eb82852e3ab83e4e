"""Progress lines on stderr: nothing for quick work, a heartbeat and a closing line for slow work."""

from __future__ import annotations

import io
import time

from tools import progress


def test_quick_work_prints_nothing():
    out = io.StringIO()
    with progress.activity("building", stream=out):
        pass
    counter = progress.Counter(3, stream=out)
    for _ in range(3):
        counter.step()
    assert out.getvalue() == ""


def test_slow_work_reports_while_running_and_when_done(monkeypatch):
    monkeypatch.setattr(progress, "MIN_S", 0.05)
    monkeypatch.setattr(progress, "PIPE_EVERY_S", 0.05)
    out = io.StringIO()
    with progress.activity("building the bank", stream=out) as info:
        time.sleep(0.2)
        info["done"] = "built"
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("progress: building the bank (") and len(lines) >= 2
    assert lines[-1].startswith("progress: building the bank: built in ")
    out = io.StringIO()
    counter = progress.Counter(3, stream=out)
    for _ in range(3):
        time.sleep(0.06)
        counter.step()
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("progress: 3/3 images, ") and "left" not in lines[-1]
    assert all(line.startswith("progress: ") for line in lines)
