"""A dead or wrong model server fails once, before the batch: exit 3, one line, no image judged."""

from __future__ import annotations

import socket
import time

import pytest

from agent.cli import main
from tests.agent_fixtures import write_set


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["detect", "eval"])
def test_dead_server_fails_fast_before_any_image(command, tmp_path, isolated_home, capsys):
    paths = write_set(tmp_path, n_refs=2)
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    if command == "detect":
        argv = ["detect", str(paths["good"]), str(paths["bad"]), "--refs", str(paths["refs"]), "--json"]
    else:
        ds = tmp_path / "ds" / "tile"
        (ds / "train" / "good").mkdir(parents=True)
        (ds / "test" / "good").mkdir(parents=True)
        for i, p in enumerate((paths["good"], paths["bad"])):
            (ds / "train" / "good" / f"{i}.png").write_bytes(p.read_bytes())
            (ds / "test" / "good" / f"{i}.png").write_bytes(p.read_bytes())
        argv = ["eval", str(tmp_path / "ds"), "--out", str(tmp_path / "runs"), "--no-progress", "--no-report"]
    start = time.monotonic()
    code = main([*argv, "--backend", "openai", "--base-url", url])
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    assert code == 3, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "before any image was judged" in lines[0] and "connection refused" in lines[0]
    assert "serve-model" in lines[0]  # the fix
    assert "{" not in out and "progress:" not in err  # no image ran its tools
    assert elapsed < 30


def test_server_without_the_model_fails_fast(tmp_path, isolated_home, capsys):
    from evals.fakeserver import FakeOpenAIServer

    paths = write_set(tmp_path, n_refs=1)
    with FakeOpenAIServer(models=["other/model"]) as server:
        code = main(["detect", str(paths["good"]), "--refs", str(paths["refs"]), "--backend", "openai",
                     "--base-url", server.base_url, "--model", "Qwen/Qwen3-VL-8B-Instruct"])
    err = capsys.readouterr().err
    assert code == 3
    assert "does not serve 'Qwen/Qwen3-VL-8B-Instruct'" in err and "other/model" in err and "--model" in err
