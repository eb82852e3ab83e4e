"""`anomaly-agent serve` over real HTTP: httpx against uvicorn on a loopback port (backend none unless said)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from agent.schemas import Verdict
from tests.agent_fixtures import texture
from tests.server_fixtures import ServerThread, png_bytes, serve_config, serve_settings, texture_png

REFS = [("references", (f"ref{i}.png", texture_png(i), "image/png")) for i in range(3)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from agent.server import create_app

    home = tmp_path_factory.mktemp("serve")
    app = create_app(serve_settings(home, max_upload_mb=1.0), serve_config(home))
    with ServerThread(app) as srv:
        srv.home = home
        yield srv


def detect(server, *files, **data):
    return httpx.post(f"{server.url}/v1/detect", files=list(files), data=data, timeout=60)


def bad_image(name="bad.png"):
    return ("images", (name, texture_png(101, defect=True), "image/png"))


def good_image(name="good.png"):
    return ("images", (name, texture_png(100), "image/png"))


def test_health_ready_and_docs(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["ready"] is True and ready["backend"] == "none" and ready["tools_only"] is True
    assert "text/html" in httpx.get(f"{server.url}/docs").headers["content-type"]
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for path in ("/v1/detect", "/v1/sessions", "/v1/sessions/{session}/messages", "/v1/runs/{run_id}/feedback",
                 "/v1/memory/stats", "/v1/memory/examples", "/v1/memory/notes", "/v1/chat/completions", "/v1/models"):
        assert path in paths, path


def test_detect_returns_verdicts_with_run_urls(server):
    reply = detect(server, bad_image(), good_image(), *REFS, category="texture")
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert [r["image"] for r in results] == ["bad.png", "good.png"]
    bad, good = results
    assert set(Verdict.model_fields) <= set(bad)  # every field of `detect --json`
    assert bad["pred_label"] == "anomalous" and good["pred_label"] == "normal"
    assert bad["status"] == "ok" and bad["score_source"] == "tools" and bad["regions"]
    for key in ("overlay", "map", "image_url", "heat"):
        png = httpx.get(server.url + bad[key])
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n", key
    evidence_map = bad["evidence"][0]["map_path"]
    assert evidence_map.startswith(f"/v1/runs/{bad['run_id']}/")  # a URL, never a server path
    assert httpx.get(server.url + evidence_map).status_code == 200
    assert httpx.get(f"{server.url}/v1/runs/{bad['run_id']}").json()["pred_score"] == bad["pred_score"]
    recent = httpx.get(f"{server.url}/v1/runs").json()["runs"]
    assert {bad["run_id"], good["run_id"]} <= {r["run_id"] for r in recent}


def test_threshold_relabels(server):
    default = detect(server, bad_image(), *REFS, category="texture").json()["results"][0]
    assert default["pred_label"] == "anomalous" and default["threshold"] == 0.5
    # a threshold above this image's own score relabels it (the score is the tools' reading, below 1)
    above = default["pred_score"] + (1.0 - default["pred_score"]) / 2
    assert above < 1.0
    high = detect(server, bad_image(), *REFS, category="texture", threshold=repr(above)).json()["results"][0]
    assert high["threshold"] == above and high["pred_label"] == "normal"
    assert "threshold 1.00" in high["explanation"]


def test_streamed_detect(server):
    with httpx.stream("POST", f"{server.url}/v1/detect", files=[bad_image(), *REFS], data={"category": "texture"},
                      headers={"Accept": "text/event-stream"}, timeout=60) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = []
        for line in reply.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
            elif line.startswith("data: "):
                events[-1] = (events[-1], json.loads(line[6:]))
    names = [e[0] for e in events]
    assert names[0] == "started" and names[-2:] == ["verdict", "done"]
    assert names.index("survey_started") < names.index("tool") < names.index("verdict")
    tools = {data["tool"]: data for name, data in events if name == "tool"}
    assert list(tools) == ["patch_knn", "patch_knn_fine", "survey"]  # the two scales, then their reading
    tool = tools["patch_knn"]
    assert tool["tool"] == "patch_knn" and "patch_knn compared" in tool["summary"]
    assert dict(events)["verdict"]["record"]["pred_label"] == "anomalous"


@pytest.mark.parametrize(("files", "data", "status", "words"), [
    ([("images", ("notes.txt", b"hello, not an image", "text/plain"))], {}, 415, "not an image"),
    ([("images", ("tiny.png", png_bytes(texture(1)[:16, :16]), "image/png"))], {}, 400, "too small"),
    ([("images", ("cut.png", texture_png(1)[:200], "image/png"))], {}, 400, "corrupt"),
    ([], {"category": "texture"}, 415, "multipart"),
    ([("other", ("a.png", texture_png(1), "image/png"))], {}, 400, "'images'"),
    ([("images", ("a.png", texture_png(1), "image/png"))], {"references": "somewhere/on/disk"}, 400, "memory"),
    ([("images", ("a.png", texture_png(1), "image/png"))], {"threshold": "2"}, 400, "threshold"),
    ([("images", ("a.png", texture_png(1), "image/png"))], {"references": "memory", "category": "nothing"}, 400,
     "no normal examples"),
])
def test_detect_errors_name_cause_and_fix(server, files, data, status, words):
    reply = httpx.post(f"{server.url}/v1/detect", files=files or None, data=data, timeout=60)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert words in error["message"] and error["fix"]


def test_body_over_the_limit_is_413(server):
    reply = httpx.post(f"{server.url}/v1/detect", files=[("images", ("big.png", b"\0" * 1_200_000, "image/png"))])
    assert reply.status_code == 413
    assert "--max-upload-mb" in reply.json()["error"]["fix"]


def test_paths_are_never_client_named(server):
    run_id = detect(server, good_image(), *REFS, category="texture").json()["results"][0]["run_id"]
    for url in (f"/v1/runs/{'0' * 32}", "/v1/runs/..%2F..%2Fetc", f"/v1/runs/{run_id}/meta.json",
                f"/v1/runs/{run_id}/record.json", f"/v1/runs/{run_id}/..%2Fmeta.json", "/v1/sessions/../../x",
                "/v1/sessions/0123456789ab"):
        reply = httpx.get(server.url + url)
        assert reply.status_code == 404, url
        assert reply.json()["error"]["fix"]


def test_no_cors_headers_unless_configured(server):
    reply = httpx.get(f"{server.url}/v1/runs", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in reply.headers


def test_memory_routes(server):
    png = texture_png(7)
    added = httpx.post(f"{server.url}/v1/memory/examples", files={"image": ("n.png", png, "image/png")},
                       data={"category": "memtex", "label": "normal"}).json()["stored"]
    assert added["label"] == "normal" and added["category"] == "memtex"
    conflict = httpx.post(f"{server.url}/v1/memory/examples", files={"image": ("n.png", png, "image/png")},
                          data={"category": "memtex", "label": "anomalous"})
    assert conflict.status_code == 409 and conflict.json()["error"]["fix"]
    note = httpx.post(f"{server.url}/v1/memory/notes", json={"category": "memtex", "text": "stripes are normal"})
    assert note.json()["note"]["text"] == "stripes are normal"
    stats = httpx.get(f"{server.url}/v1/memory/stats").json()["categories"]["memtex"]
    assert stats["normal"] == 1 and stats["notes"] == 1 and stats["embedding_models"]
    bad = httpx.post(f"{server.url}/v1/memory/examples", files={"image": ("n.png", png, "image/png")},
                     data={"category": "memtex", "label": "maybe"})
    assert bad.status_code == 400 and "label" in bad.json()["error"]["message"]


def test_feedback_changes_the_next_verdict_of_a_near_duplicate(server):
    for i in range(3):
        httpx.post(f"{server.url}/v1/memory/examples", files={"image": (f"r{i}.png", texture_png(i), "image/png")},
                   data={"category": "fbtex", "label": "normal"}).raise_for_status()
    query = ("images", ("q.png", texture_png(101, defect=True), "image/png"))
    twin = ("images", ("twin.png", texture_png(101, defect=True, noise_seed=5), "image/png"))
    first = detect(server, query, category="fbtex", references="memory").json()["results"][0]
    before = detect(server, twin, category="fbtex", references="memory").json()["results"][0]
    assert first["pred_label"] == before["pred_label"] == "anomalous"
    reply = httpx.post(f"{server.url}/v1/runs/{first['run_id']}/feedback",
                       json={"label": "normal", "note": "this dark blob is a normal marking"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["verdict_was_right"] is False and body["stored"]["label"] == "normal"
    assert body["stored"]["description"] == "this dark blob is a normal marking"
    after = detect(server, twin, category="fbtex", references="memory").json()["results"][0]
    assert after["pred_label"] == "normal", after["explanation"]
    assert after["pred_score"] < before["pred_score"]


def test_a_reference_set_that_flags_most_images_gets_a_hint(server):
    refs = [("references", (f"c{i}.png", texture_png(40 + i), "image/png")) for i in range(3)]
    bad = [("images", (f"b{i}.png", texture_png(200 + i, defect=True), "image/png")) for i in range(5)]
    four = detect(server, *bad[:4], *refs, category="coverage").json()["results"]
    assert [r["pred_label"] for r in four] == ["anomalous"] * 4
    assert four[-1]["coverage_hint"] is None  # four verdicts are too few to say
    fifth = detect(server, bad[4], *refs, category="coverage").json()["results"][0]
    assert fifth["coverage_hint"].startswith("hint: 5 of 5 recent verdicts with these references are anomalous.")
    assert "/feedback" in fifth["coverage_hint"]
    assert httpx.get(f"{server.url}/v1/runs/{fifth['run_id']}").json()["coverage_hint"] == fifth["coverage_hint"]
    other = detect(server, good_image("g.png"), *REFS, category="coverage").json()["results"][0]
    assert other["coverage_hint"] is None  # another reference set keeps its own count
    stored = []
    for record in four[:2]:  # the inspector confirms two of them: defects, not a sign of the references
        reply = httpx.post(f"{server.url}/v1/runs/{record['run_id']}/feedback", json={"label": "anomalous"})
        assert reply.status_code == 200, reply.text
        stored.append(reply.json()["example_id"])
    sixth = detect(server, good_image("g2.png"), *refs, category="coverage").json()["results"][0]
    assert sixth["pred_label"] == "normal" and sixth["coverage_hint"] is None  # 3 unconfirmed of 6
    httpx.delete(f"{server.url}/v1/memory/examples/{stored[0]}").raise_for_status()  # one confirmation undone
    seventh = detect(server, good_image("g3.png"), *refs, category="coverage").json()["results"][0]
    assert seventh["coverage_hint"].startswith("hint: 4 of 7 recent")


def test_feedback_errors(server):
    run = detect(server, good_image(), *REFS).json()["results"][0]  # no category
    reply = httpx.post(f"{server.url}/v1/runs/{run['run_id']}/feedback", json={"label": "normal"})
    assert reply.status_code == 400 and "category" in reply.json()["error"]["message"]
    reply = httpx.post(f"{server.url}/v1/runs/{run['run_id']}/feedback", json={"label": "broken"})
    assert reply.status_code == 422 and reply.json()["error"]["fix"]
    reply = httpx.post(f"{server.url}/v1/runs/{'f' * 32}/feedback", json={"label": "normal"})
    assert reply.status_code == 404


def test_session_streams_its_answer(server):
    files = [("image", ("bad.png", texture_png(101, defect=True), "image/png")), *REFS]
    start = httpx.post(f"{server.url}/v1/sessions", files=files, data={"category": "texture", "message": "Is it ok?"},
                       timeout=60).json()
    assert start["verdict"]["pred_label"] == "anomalous" and start["answer"].startswith("It is anomalous")
    with httpx.stream("POST", f"{server.url}/v1/sessions/{start['session']}/messages", json={"message": "Where?"},
                      headers={"Accept": "text/event-stream"}, timeout=60) as reply:
        lines = [line for line in reply.iter_lines() if line.startswith(("event: ", "data: "))]
    events = [line[7:] for line in lines if line.startswith("event: ")]
    assert events[0] == "started" and events[-2:] == ["reply", "done"] and "answer_delta" in events
    deltas = [json.loads(lines[i + 1][6:])["text"] for i, line in enumerate(lines) if line == "event: answer_delta"]
    final = json.loads(lines[-3][6:])
    assert "".join(deltas) == final["answer"] and final["turn"] == 2


def test_non_loopback_needs_a_key():
    from agent.errors import UserInputError
    from agent.server import ServeSettings

    with pytest.raises(UserInputError, match="--api-key"):
        ServeSettings(host="0.0.0.0").check()
    assert "WITHOUT authentication" in ServeSettings(host="0.0.0.0", insecure_no_auth=True).check()[0]
    assert ServeSettings(host="0.0.0.0", api_key="k").check()
    assert ServeSettings(host="::1").check() == []


def test_auth_busy_and_time_limit(tmp_path):
    """A slow model (1.5 s per call), one worker, no queue, a 0.8 s limit, an api key: 401 without the key,
    503 with Retry-After while the worker is busy, 504 past the limit."""
    from agent.server import create_app
    from evals.fakeserver import FakeOpenAIServer, inspection_responder

    with FakeOpenAIServer(latency_s=1.5, responder=inspection_responder) as fake:
        cfg = serve_config(tmp_path, backend="openai", base_url=fake.base_url, model="fake-vlm", max_retries=0)
        settings = serve_settings(tmp_path, api_key="secret", workers=1, queue=0, request_timeout_s=0.8)
        with ServerThread(create_app(settings, cfg, warm_up=True)) as srv:
            key = {"Authorization": "Bearer secret"}
            assert httpx.get(f"{srv.url}/readyz").json() == {"ready": True}  # details need the key
            ready = httpx.get(f"{srv.url}/readyz", headers=key).json()
            assert ready["backend"] == "openai" and ready["endpoint_reachable"] is True
            files = [("images", ("bad.png", texture_png(101, defect=True), "image/png")), *REFS]
            denied = httpx.post(f"{srv.url}/v1/detect", files=files)
            assert denied.status_code == 401 and "Bearer" in denied.json()["error"]["fix"]
            wrong = httpx.post(f"{srv.url}/v1/detect", files=files, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            slow: dict = {}
            thread = threading.Thread(target=lambda: slow.update(r=httpx.post(f"{srv.url}/v1/detect", files=files,
                                                                               headers=key, timeout=30)))
            thread.start()
            deadline = time.monotonic() + 5
            while httpx.get(f"{srv.url}/readyz", headers=key).json()["running"] == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            busy = httpx.post(f"{srv.url}/v1/detect", files=files, headers=key)
            thread.join(30)
            assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1
            assert "--workers" in busy.json()["error"]["fix"]
            assert slow["r"].status_code == 504 and "--request-timeout" in slow["r"].json()["error"]["fix"]
