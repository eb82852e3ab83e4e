"""`python -m evals.gpu_check` end to end against the fake vLLM-like server (`--base-url`: nothing started)."""

from __future__ import annotations

import json
from pathlib import Path

from evals import gpu_check
from evals.fakeserver import FakeOpenAIServer, inspection_responder

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_green_against_the_fake_server(tmp_path, isolated_home, capsys):
    with FakeOpenAIServer(models=["fake-vlm"], responder=inspection_responder) as srv:
        code = gpu_check.main(["fake-vlm", "--base-url", srv.base_url, "--out", str(tmp_path / "gc"),
                               "--categories", "fabric", "--n-train", "2", "--n-test", "4", "--size", "128",
                               "--shots", "1", "--limit", "4"])
        requests = list(srv.requests)
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    html = tmp_path / "gc" / "openai" / "report.html"
    assert html.exists()
    assert out.strip().splitlines()[-1] == f"gpu-check passed. compare report: {html}"
    backends = {name: json.loads((tmp_path / "gc" / name / "metrics.json").read_text())["backend"]
                for name in ("openai", "none", "direct")}
    assert backends == {"openai": "openai", "none": "none", "direct": "openai"}
    assert requests and all(r.rejected is None for r in requests)  # every request passed vLLM's checks
    assert any(r.body.get("tools") for r in requests) and any("Yes or No" in json.dumps(r.messages) for r in requests)


def test_gpu_check_says_when_the_server_does_not_serve_the_model(tmp_path, capsys):
    with FakeOpenAIServer(models=["other"]) as srv:
        code = gpu_check.main(["wanted-model", "--base-url", srv.base_url, "--out", str(tmp_path), "--start-timeout", "1"])
    assert code == 3
    assert "serves other, not 'wanted-model'" in capsys.readouterr().err


def test_make_gpu_check_runs_the_module():
    makefile = (REPO / "Makefile").read_text()
    assert "gpu-check: setup\n\t$(PY) -m evals.gpu_check $(GPU_MODEL) $(GPU_CHECK_ARGS)" in makefile
