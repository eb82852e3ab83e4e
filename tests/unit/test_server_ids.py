"""Ids and names the server opens are checked with fullmatch (a trailing newline or a folder is refused), called
directly (over HTTP, clients normalise such paths before they reach this code), and folders are pruned."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.server import openai_convo
from agent.server.errors import ApiError
from agent.server.prune import prune_oldest
from agent.server.routes_sessions import _folder
from agent.server.runs import RunStore


def _refused(call) -> None:
    with pytest.raises(ApiError) as err:
        call()
    assert err.value.status == 404 and err.value.fix


def test_run_store_refuses_traversal_and_near_ids(tmp_path):
    store = RunStore(tmp_path)
    run_id, _ = store.new_run(b"\x89PNG fake", ".png", {})
    (tmp_path / "secret.txt").write_text("no")
    assert store.folder(run_id) == tmp_path / "runs" / run_id
    assert store.file(run_id, "image").name == "query.png"
    for bad in (f"{run_id}\n", f"{run_id}/", f"../{run_id}", "..", "../../secret.txt", run_id.upper(), run_id[:-1],
                f"{run_id}\x00", "", None):
        _refused(lambda bad=bad: store.folder(bad))
    (tmp_path / "runs" / run_id / "e1.png").write_bytes(b"x")
    assert store.file(run_id, "e1.png").name == "e1.png"
    for name in ("meta.json", "record.json", "../meta.json", "e1.png\n", "e1.png/..", "../../secret.txt",
                 "query.png", "e1234.png", "/etc/passwd"):
        _refused(lambda name=name: store.file(run_id, name))


def test_session_lookup_refuses_traversal_and_near_ids(tmp_path):
    state = SimpleNamespace(sessions_dir=tmp_path / "sessions")
    session = "0123456789ab"
    (state.sessions_dir / session).mkdir(parents=True)
    (state.sessions_dir / session / "meta.json").write_text("{}")
    (state.sessions_dir / "openai").mkdir()
    (state.sessions_dir / "openai" / "meta.json").write_text("{}")
    assert _folder(state, session) == state.sessions_dir / session
    for bad in (f"{session}\n", f"../sessions/{session}", "openai", "..", session.upper(), f"{session}0", "", None):
        _refused(lambda bad=bad: _folder(state, bad))


def test_prune_keeps_the_newest_and_matching_names_only(tmp_path):
    import re

    pattern = re.compile(r"[0-9a-f]{4}")
    for i, name in enumerate(["aaaa", "bbbb", "cccc", "dddd", ".tmp1", "other"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    assert prune_oldest(tmp_path, 2, pattern) == ["aaaa", "bbbb"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp1", "cccc", "dddd", "other"]
    index = tmp_path / "index"
    index.mkdir()
    (index / "k1.json").write_text('[["cccc", "c1"], ["aaaa", "a1"]]')
    (index / "k2.json").write_text('[["aaaa", "a1"]]')
    openai_convo.prune(index, tmp_path)
    assert [p.name for p in index.iterdir()] == ["k1.json"] and (index / "k1.json").read_text() == '[["cccc", "c1"]]'


def test_run_store_prunes_runs_and_reference_sets(tmp_path):
    store = RunStore(tmp_path, max_runs=2)
    sets = [store.reference_set([(bytes([i]) * 10, ".png")]) for i in range(4)]
    for i, paths in enumerate(sets):
        os.utime(Path(paths[0]).parent, (1000 + i, 1000 + i))
    store.reference_set([(bytes([0]) * 10, ".png")])  # the oldest set, uploaded again: now the newest
    runs = [store.new_run(b"x", ".png", {})[0] for _ in range(4)]
    for i, run_id in enumerate(runs):
        os.utime(tmp_path / "runs" / run_id, (1000 + i, 1000 + i))
    store.prune()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(runs[2:])
    kept = {p.name for p in (tmp_path / "refsets").iterdir()}
    assert kept == {Path(sets[0][0]).parent.name, Path(sets[3][0]).parent.name}
