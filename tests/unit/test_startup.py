"""Startup: `--version`, and `--help` / `doctor` without the heavy imports they do not need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import io, contextlib, json, sys
from agent.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(sys.argv[1:])
heavy = ("torch", "open_clip", "torchvision", "segment_anything", "numpy", "PIL", "langgraph", "faiss", "cv2")
print(json.dumps({"code": code, "out": out.getvalue(), "loaded": [m for m in heavy if m in sys.modules]}))
"""


def _run(*argv: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_AGENT_")}
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_version():
    result = _run("--version")
    assert result["code"] == 0
    assert result["out"].strip().startswith("anomaly-agent ") and result["out"].strip().split()[1][0].isdigit()


def test_help_imports_nothing_heavy():
    for argv in (["--help"], ["detect", "--help"], ["eval", "--help"]):
        result = _run(*argv)
        assert result["code"] == 0 and "Usage" in result["out"]
        assert result["loaded"] == [], (argv, result["loaded"])


def test_doctor_does_not_import_open_clip_or_torchvision(tmp_path):
    result = _run("doctor", "--json")
    assert "open_clip" not in result["loaded"] and "torchvision" not in result["loaded"]
    assert "segment_anything" not in result["loaded"]
    report = json.loads(result["out"])
    assert any(c["name"].startswith("CLIP") for c in report["checks"])
