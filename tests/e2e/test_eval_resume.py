"""SIGKILL a running evaluation partway, resume it, and find every test image exactly once."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from evals.datasets import load_dataset
from evals.results import iter_records
from tests.eval_helpers import make_folder_tree

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from evals.datasets import load_dataset
    from evals.runner import EvalSpec, evaluate
    from tests.eval_helpers import BrightnessDetector

    root, out, resume = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
    det = BrightnessDetector(delay_s=float(sys.argv[4]))
    paths, stats, metrics = evaluate(det, load_dataset(root), EvalSpec(shots=1), out, {{"backend": "fake"}},
                                     {{"root": str(root)}}, concurrency=3, resume=resume, progress=False)
    print("done", stats.done, "skipped", stats.skipped)
    """
)


def _start(script: Path, root: Path, out: Path, resume: bool, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(script), str(root), str(out), "1" if resume else "0", str(delay)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_sigkill_then_resume_has_each_image_once(tmp_path):
    root = make_folder_tree(tmp_path / "ds", n_good=6, n_bad=5)  # 2 x (6 + 10) = 32 test images
    expected = {s.path for c in load_dataset(root) for s in c.test}
    script = tmp_path / "run_eval.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    out = tmp_path / "run"
    results = out / "results.jsonl"

    proc = _start(script, root, out, resume=False, delay=0.15)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if results.exists() and results.read_bytes().count(b"\n") >= 6:
            break
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it was killed: {proc.communicate()}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    partial = list(iter_records(results))
    assert 6 <= len(partial) < len(expected)
    # a write cut off by the kill leaves half a line behind; the resume must cope with it
    with results.open("ab") as fh:
        fh.write(b'{"image": "half-written')

    proc = _start(script, root, out, resume=True, delay=0.0)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"skipped {len(partial)}" in stdout

    counts = collections.Counter(r["image"] for r in iter_records(results))
    assert set(counts) == expected
    assert all(n == 1 for n in counts.values()), [p for p, n in counts.items() if n > 1]
    assert not results.read_bytes().count(b"half-written")
    assert (out / "metrics.json").is_file() and (out / "config.json").is_file()


def test_eval_cli_tools_only_writes_a_complete_run_dir(tmp_path, isolated_home, capsys):
    """`anomaly-agent eval ROOT --backend none` with the real agent (tools + fusion) on a tiny tree."""
    from agent.cli import main

    root = make_folder_tree(tmp_path / "ds", categories=("alpha",), n_train=2, n_good=2, defects=("dent",), n_bad=2)
    out = tmp_path / "run"
    code = main(["eval", str(root), "--shots", "2", "--backend", "none", "--out", str(out), "--no-progress",
                 "--concurrency", "2"])
    assert code == 0, capsys.readouterr().err
    for name in ("config.json", "results.jsonl", "metrics.json", "report.html", "report.md"):
        assert (out / name).is_file(), name
    assert list((out / "overlays").rglob("*.png")) and list((out / "plots").glob("roc_*.png"))
    recs = list(iter_records(out / "results.jsonl"))
    assert len(recs) == 4 and all(r["status"] == "ok" and r["evidence"] for r in recs)
    assert "| alpha |" in (out / "report.md").read_text()
    assert "alpha" in capsys.readouterr().out  # the per-category table
    # a second run into the same folder without --resume is refused with the fix
    assert main(["eval", str(root), "--shots", "2", "--backend", "none", "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_eval_cli_bad_dataset_exits_2(tmp_path, isolated_home, capsys):
    from agent.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty"), "--backend", "none"]) == 2
    assert "no category folders" in capsys.readouterr().err
