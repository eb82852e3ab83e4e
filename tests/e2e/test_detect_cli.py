"""`anomaly-agent detect`: JSON lines, error records in a batch, exit codes, overlays, traces, replay."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from tests.agent_fixtures import label_logprobs, verdict_json, write_set


@pytest.fixture
def images(tmp_path, isolated_home):
    paths = write_set(tmp_path)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(paths["good"].read_bytes()[:200])
    paths["corrupt"] = corrupt
    return paths


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_batch_records_bad_items_and_goes_on(images, capsys, tmp_path):
    argv = ["detect", str(images["good"]), str(images["corrupt"]), str(tmp_path / "missing.png"), str(images["bad"]),
            "--refs", str(images["refs"]), "--backend", "none", "--json", "--out", str(tmp_path / "ov")]
    code = main(argv)
    out, err = capsys.readouterr()
    rows = _lines(out)
    assert code == 2
    assert [r["status"] for r in rows] == ["ok", "error", "error", "ok"]
    assert rows[0]["image"] == str(images["good"])
    assert "truncated or corrupt" in rows[1]["error"] and "Fix:" in rows[1]["error"]
    assert "file not found" in rows[2]["error"]
    assert rows[3]["pred_label"] == "anomalous" and rows[3]["pred_score"] > rows[0]["pred_score"]
    assert Path(rows[3]["overlay"]).exists()
    assert "Traceback" not in err
    assert sum(1 for line in err.splitlines() if line.startswith("error:")) == 2


def test_jobs_give_the_same_records_in_input_order(images, capsys, tmp_path):
    """-j 3 judges images in threads: the same verdicts as one at a time, printed in input order."""
    names = ["good", "bad", "good", "bad"]
    argv = ["detect", *[str(images[n]) for n in names], str(tmp_path / "missing.png"),
            "--refs", str(images["refs"]), "--backend", "none", "--json"]
    assert main(argv) == 2
    one = _lines(capsys.readouterr().out)
    assert main([*argv, "-j", "3"]) == 2
    three = _lines(capsys.readouterr().out)
    assert [r["image"] for r in three] == [str(images[n]) for n in names] + [str(tmp_path / "missing.png")]
    assert [r["status"] for r in three] == ["ok"] * 4 + ["error"]
    assert [r.get("pred_label") for r in three] == [r.get("pred_label") for r in one]
    assert [r["pred_score"] for r in three[:4]] == pytest.approx([r["pred_score"] for r in one[:4]], abs=1e-6)


def test_fail_on_anomaly_exit_code(images, capsys):
    assert main(["detect", str(images["bad"]), "--refs", str(images["refs"]), "--backend", "none",
                 "--fail-on-anomaly"]) == 1
    assert "ANOMALOUS" in capsys.readouterr().out
    assert main(["detect", str(images["good"]), "--refs", str(images["refs"]), "--backend", "none",
                 "--fail-on-anomaly"]) == 0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_exit_3_with_one_line(images, isolated_home):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    env = {**os.environ, "ANOMALY_AGENT_HOME": str(isolated_home), "ANOMALY_AGENT_MAX_RETRIES": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "detect", str(images["good"]), "--refs", str(images["refs"]),
         "--backend", "openai", "--base-url", url],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0] and "Fix" in errors[0]
    assert "Traceback" not in proc.stderr


def test_trace_then_replay(images, capsys, tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([
        {"content": "", "tool_calls": [{"name": "zoom", "args": {"box": [64, 0, 128, 64]}, "id": "z"}]},
        {"content": "A dark blob at the top right."},
        {"content": verdict_json("anomalous"), "logprobs": label_logprobs(0.9)},
    ]))
    trace_dir = tmp_path / "trace"
    assert main(["detect", str(images["bad"]), "--refs", str(images["refs"]), "--backend", "scripted",
                 "--script", str(script), "--json", "--trace", str(trace_dir)]) == 0
    first = _lines(capsys.readouterr().out)[0]
    trace_files = list(trace_dir.glob("*.json"))
    assert len(trace_files) == 1
    trace = json.loads(trace_files[0].read_text())
    assert [c["name"] for c in trace["tool_calls"]] == ["zoom"]
    assert trace["usage"]["model_calls"] == 3
    assert list((trace_dir / "maps").glob("*.png")), "maps are saved as PNG"
    # replaying the saved trace gives the same verdict
    assert main(["detect", str(images["bad"]), "--refs", str(images["refs"]), "--backend", "scripted",
                 "--script", str(trace_files[0]), "--json"]) == 0
    replay = _lines(capsys.readouterr().out)[0]
    assert replay["pred_label"] == first["pred_label"]
    assert replay["pred_score"] == pytest.approx(first["pred_score"], abs=1e-6)
