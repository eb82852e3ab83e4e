"""`anomaly-agent serve-model`: the vllm command line, parsers per family, missing vllm."""

from __future__ import annotations

import json
import shlex

import pytest

from agent.cli import main
from agent.commands.serve_model import build_vllm_command, tool_parser_for
from agent.errors import UserInputError


def test_dry_run_prints_a_correct_vllm_command(capsys):
    assert main(["serve-model", "Qwen/Qwen3-VL-8B-Instruct", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    argv = shlex.split(out.strip())
    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen3-VL-8B-Instruct"]
    assert "--enable-auto-tool-choice" in argv
    assert argv[argv.index("--tool-call-parser") + 1] == "hermes"
    limits = json.loads(argv[argv.index("--limit-mm-per-prompt") + 1])
    assert limits == {"image": 4, "video": 0}
    assert argv[argv.index("--max-model-len") + 1] == "32768"
    assert argv[argv.index("--max-logprobs") + 1] == "20"
    assert argv[argv.index("--port") + 1] == "8000"
    assert "ANOMALY_AGENT_BASE_URL=http://127.0.0.1:8000/v1" in err
    assert "own environment or container" in err


def test_extra_args_after_double_dash_and_port(capsys):
    code = main(["serve-model", "Qwen/Qwen2.5-VL-7B-Instruct", "--port", "9001", "--images", "2",
                 "--dry-run", "--", "--gpu-memory-utilization", "0.85", "--dtype", "bfloat16"])
    assert code == 0
    argv = shlex.split(capsys.readouterr().out.strip())
    assert argv[-4:] == ["--gpu-memory-utilization", "0.85", "--dtype", "bfloat16"]
    assert argv[argv.index("--port") + 1] == "9001"
    assert json.loads(argv[argv.index("--limit-mm-per-prompt") + 1])["image"] == 2


@pytest.mark.parametrize(
    ("model", "parser"),
    [
        ("Qwen/Qwen3-VL-8B-Instruct", "hermes"),
        ("Qwen/Qwen2.5-VL-7B-Instruct", "hermes"),
        ("/models/qwen3-vl-2b", "hermes"),
        ("meta-llama/Llama-3.2-11B-Vision-Instruct", "llama3_json"),
        ("meta-llama/Llama-4-Scout-17B-16E-Instruct", "llama4_pythonic"),
        ("mistralai/Mistral-Small-3.1-24B-Instruct-2503", "mistral"),
        ("mistralai/Pixtral-12B-2409", "mistral"),
        ("zai-org/GLM-4.5V", "glm45"),
    ],
)
def test_parser_per_family(model, parser):
    assert tool_parser_for(model) == parser


def test_unknown_family_asks_for_the_flag():
    with pytest.raises(UserInputError, match="--tool-call-parser"):
        tool_parser_for("acme/vision-9000")
    cmd = build_vllm_command("acme/vision-9000", tool_parser="pythonic")
    assert cmd[cmd.index("--tool-call-parser") + 1] == "pythonic"
    assert json.loads(cmd[cmd.index("--limit-mm-per-prompt") + 1]) == {"image": 4}


def test_exec_without_vllm_fails_clearly(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    assert main(["serve-model", "Qwen/Qwen3-VL-8B-Instruct"]) == 2
    err = capsys.readouterr().err
    assert "`vllm` is not on PATH" in err and "own environment or container" in err


def test_exec_replaces_the_process_with_vllm(monkeypatch, tmp_path):
    fake = tmp_path / "vllm"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    seen = {}

    def fake_execvp(file, args):
        seen["file"], seen["args"] = file, args
        raise SystemExit(0)

    monkeypatch.setattr("agent.commands.serve_model.os.execvp", fake_execvp)
    assert main(["serve-model", "Qwen/Qwen3-VL-8B-Instruct", "--port", "8123"]) == 0
    assert seen["file"] == "vllm" and seen["args"][:3] == ["vllm", "serve", "Qwen/Qwen3-VL-8B-Instruct"]
    assert "8123" in seen["args"]


def test_bad_port():
    with pytest.raises(UserInputError, match="port"):
        build_vllm_command("Qwen/Qwen3-VL-8B-Instruct", port=70000)
