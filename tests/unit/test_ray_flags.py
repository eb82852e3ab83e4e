"""`eval --ray` flags without a cluster: bare --ray, a missing Ray install, flags that need --ray."""

from __future__ import annotations

import sys

import pytest

from agent.cli import main
from agent.commands.eval import bare_ray_flag
from tests.eval_helpers import make_folder_tree


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["eval", "ds", "--ray"], ["eval", "ds", "--ray", "local"]),
        (["eval", "--ray", "ds"], ["eval", "--ray", "local", "ds"]),
        (["eval", "ds", "--ray", "--workers", "4"], ["eval", "ds", "--ray", "local", "--workers", "4"]),
        (["eval", "ds", "--ray", "auto"], ["eval", "ds", "--ray", "auto"]),
        (["eval", "ds", "--ray", "ray://head:10001"], ["eval", "ds", "--ray", "ray://head:10001"]),
        (["eval", "ds", "--ray", "10.0.0.5:6379"], ["eval", "ds", "--ray", "10.0.0.5:6379"]),
    ],
)
def test_bare_ray_means_a_local_ray(argv, expected):
    assert bare_ray_flag(argv) == expected


def test_without_ray_installed_the_error_says_how_to_get_it(tmp_path, isolated_home, monkeypatch, capsys):
    root = make_folder_tree(tmp_path / "ds", categories=("alpha",))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as without the extra
    code = main(["eval", str(root), "--backend", "none", "--ray", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "pip install 'anomaly-agent[ray]'" in err[0] and "--ray needs Ray" in err[0]
    assert not (tmp_path / "run").exists()


def test_workers_without_ray_is_refused(tmp_path, isolated_home, capsys):
    root = make_folder_tree(tmp_path / "ds", categories=("alpha",))
    code = main(["eval", str(root), "--backend", "none", "--workers", "2", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "need --ray" in capsys.readouterr().err
