"""Pruning over real HTTP: with --max-runs 2, runs, uploaded reference sets, chat sessions (with their OpenAI
index entries and locks) stay at two each, the newest."""

from __future__ import annotations

import base64

import httpx

from tests.server_fixtures import ServerThread, serve_config, serve_settings, texture_png


def test_runs_reference_sets_and_sessions_are_pruned(tmp_path):
    from agent.server import create_app

    home = tmp_path / "home"
    app = create_app(serve_settings(home, max_runs=2), serve_config(home))
    with ServerThread(app) as srv:
        data = home / "serve"
        for i in range(3):
            refs = [("references", (f"r{j}.png", texture_png(10 * i + j), "image/png")) for j in range(2)]
            reply = httpx.post(f"{srv.url}/v1/detect", files=[("images", ("q.png", texture_png(50 + i), "image/png")),
                                                              *refs], timeout=60)
            assert reply.status_code == 200, reply.text
        assert len(list((data / "runs").iterdir())) == 2
        assert len([p for p in (data / "refsets").iterdir() if not p.name.startswith(".")]) == 2

        sessions = []
        for i in range(3):
            files = [("image", ("p.png", texture_png(60 + i), "image/png")),
                     ("references", ("r.png", texture_png(1), "image/png"))]
            sessions.append(httpx.post(f"{srv.url}/v1/sessions", files=files, timeout=60).json()["session"])
        assert httpx.get(f"{srv.url}/v1/sessions/{sessions[0]}").status_code == 404
        assert httpx.get(f"{srv.url}/v1/sessions/{sessions[2]}").status_code == 200
        first = {"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(texture_png(70)).decode()}}]}
        for j in range(2):
            httpx.post(f"{srv.url}/v1/memory/examples", files={"image": (f"n{j}.png", texture_png(j), "image/png")},
                       data={"category": "pr", "label": "normal"}).raise_for_status()
        reply = httpx.post(f"{srv.url}/v1/chat/completions", json={"model": "anomaly-agent/pr", "messages": [first]},
                           timeout=60)
        assert reply.status_code == 200, reply.text
        kept = {p.name for p in (data / "sessions").iterdir() if p.name != "openai"}
        assert kept == {sessions[2], reply.json()["session"]}
        assert set(app.state.server._session_locks) <= kept
        for index in (data / "sessions" / "openai").glob("*.txt"):
            assert index.read_text().strip() in kept
