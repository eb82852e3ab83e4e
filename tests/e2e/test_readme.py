"""The README's quick start is exactly the two commands, and its Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_quick_start_is_two_commands_and_serve():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = quick.strip().splitlines()
    assert lines[:2] == ["make demo", "make test"] and len(lines) == 3
    assert lines[2].startswith("anomaly-agent serve ") and "http://127.0.0.1:8080/" in lines[2]


def test_python_example_runs(tmp_path, monkeypatch, capsys, isolated_home):
    (example,) = [b for b in _blocks("python") if "AnomalyAgent" in b]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[0] in ("normal", "anomalous")
    assert "patch_knn" in out[1]
