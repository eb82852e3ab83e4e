"""Memory over real HTTP: provenance and reliability are the server's to set, feedback can be undone, memory
entries can be deleted, and no reply names a server path."""

from __future__ import annotations

import httpx
import pytest

from tests.server_fixtures import ServerThread, serve_config, serve_settings, texture_png

REFS = [("references", (f"ref{i}.png", texture_png(i), "image/png")) for i in range(2)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from agent.server import create_app

    home = tmp_path_factory.mktemp("memory")
    with ServerThread(create_app(serve_settings(home), serve_config(home))) as srv:
        srv.home = home
        yield srv


def test_clients_cannot_claim_reliability_or_provenance(server):
    url = f"{server.url}/v1/memory/notes"
    for body in ({"reliability": 1.0}, {"provenance": "import"}, {"provenance": "user"}):
        reply = httpx.post(url, json={"category": "prov", "text": "trust me", **body})
        assert reply.status_code == 422, (body, reply.text)
        assert reply.json()["error"]["fix"]
    note = httpx.post(url, json={"category": "prov", "text": "a bright rim is normal"}).json()["note"]
    assert note["provenance"] == "user" and note["reliability"] == 0.8
    low = httpx.post(url, json={"category": "prov", "text": "maybe dust", "reliability": 0.3}).json()["note"]
    assert low["reliability"] == 0.3
    listed = httpx.get(url, params={"category": "prov"}).json()["notes"]
    assert {n["provenance"] for n in listed} == {"user"} and max(n["reliability"] for n in listed) == 0.8

    gone = httpx.delete(f"{url}/{note['id']}")
    assert gone.status_code == 200 and gone.json() == {"deleted": note["id"]}
    assert note["id"] not in {n["id"] for n in httpx.get(url, params={"category": "prov"}).json()["notes"]}
    again = httpx.delete(f"{url}/{note['id']}")
    assert again.status_code == 404 and "GET /v1/memory/notes" in again.json()["error"]["fix"]


def test_feedback_is_recorded_as_feedback_and_can_be_undone(server):
    def count() -> int:
        return httpx.get(f"{server.url}/v1/memory/stats").json()["categories"].get("undo", {}).get("anomalous", 0)

    run = httpx.post(f"{server.url}/v1/detect", files=[("images", ("q.png", texture_png(120, defect=True), "image/png")),
                                                       *REFS], data={"category": "undo"}, timeout=60).json()
    run_id = run["results"][0]["run_id"]
    reply = httpx.post(f"{server.url}/v1/runs/{run_id}/feedback", json={"label": "anomalous", "note": "a blob"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["new"] is True and body["example_id"] == body["stored"]["id"]
    assert body["stored"]["provenance"] == "feedback" and body["stored"]["source"] == f"feedback on run {run_id}"
    assert body["undo"] == f"DELETE /v1/memory/examples/{body['example_id']}"
    assert str(server.home) not in reply.text and "image_path" not in body["stored"]
    # the reply says exactly what changed: where it went, what it does now, and the category's threshold
    assert body["message"].startswith("stored as a labelled anomaly of 'undo'; new 'undo' images are compared with it")
    assert "'undo' threshold" in body["message"]
    assert set(body["threshold"]) == {"before", "after"}
    assert count() == 1
    # the category's threshold and its history are there to read
    shown = httpx.get(f"{server.url}/v1/memory/thresholds", params={"category": "undo"}).json()
    point = shown["categories"]["undo"]
    assert point["threshold"] == body["threshold"]["after"] and point["n_anomalous"] == 1
    assert [(h["after"], h["label"]) for h in point["history"]] == [(body["example_id"], "anomalous")]
    # the same image again: already stored, so there is nothing new to undo
    repeat = httpx.post(f"{server.url}/v1/runs/{run_id}/feedback", json={"label": "anomalous"}).json()
    assert repeat["new"] is False and repeat["undo"] is None

    undone = httpx.delete(f"{server.url}/v1/memory/examples/{body['example_id']}")
    assert undone.status_code == 200 and count() == 0
    assert "undo" not in httpx.get(f"{server.url}/v1/memory/thresholds").json()["categories"]
    blank = httpx.get(f"{server.url}/v1/memory/thresholds", params={"category": " "})
    assert blank.status_code == 400 and "empty category name" in blank.json()["error"]["message"]
    assert undone.json()["message"].startswith("removed from memory")
    missing = httpx.delete(f"{server.url}/v1/memory/examples/{body['example_id']}")
    assert missing.status_code == 404 and missing.json()["error"]["fix"]


@pytest.mark.parametrize("bad", ["0" * 31, "0" * 32 + "%0A", "..%2F..%2Fetc", "G" * 32])
def test_delete_refuses_malformed_ids(server, bad):
    for kind in ("examples", "notes"):
        reply = httpx.delete(f"{server.url}/v1/memory/{kind}/{bad}")
        assert reply.status_code == 404, (kind, bad, reply.text)


def test_no_server_path_in_replies(server):
    home = str(server.home)
    files = [("image", ("part.png", texture_png(121, defect=True), "image/png")), *REFS]
    start = httpx.post(f"{server.url}/v1/sessions", files=files, data={"category": "leak"}, timeout=60)
    assert start.status_code == 200, start.text
    verdict = start.json()["verdict"]
    assert verdict["image"] == "part.png" and verdict["evidence"]
    assert all(e["map_path"] is None or e["map_path"].startswith("/v1/") for e in verdict["evidence"])
    follow = httpx.post(f"{server.url}/v1/sessions/{start.json()['session']}/messages", json={"message": "Where?"},
                        timeout=60)
    detect = httpx.post(f"{server.url}/v1/detect", files=[("images", ("q.png", texture_png(122), "image/png")), *REFS],
                        timeout=60)
    stats = httpx.get(f"{server.url}/v1/memory/stats")
    assert stats.json()["store"] == "local"
    for reply in (start, follow, detect, stats, httpx.get(f"{server.url}/v1/runs"), httpx.get(f"{server.url}/readyz")):
        assert reply.status_code == 200 and home not in reply.text and "/tmp/" not in reply.text, reply.text[:300]
