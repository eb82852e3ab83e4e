"""Worker slots over real HTTP: a streamed request takes its slot inside the stream and gives it back only when
the worker thread has finished; a client that leaves while queued leaks nothing; unexpected errors are JSON."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.server_fixtures import ServerThread, serve_config, serve_settings, texture_png

REFS = [("references", (f"ref{i}.png", texture_png(i), "image/png")) for i in range(2)]
STREAM = {"Accept": "text/event-stream"}


def _files():
    return [("images", ("bad.png", texture_png(101, defect=True), "image/png")), *REFS]


def _load(url: str) -> dict:
    return httpx.get(f"{url}/readyz").json()


def _wait(url: str, test, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        load = _load(url)
        if test(load):
            return load
        time.sleep(0.02)
    raise AssertionError(f"never reached: {_load(url)}")


@pytest.fixture
def slow_server(tmp_path):
    """One worker, a model that takes 1 s per call."""
    from agent.server import create_app
    from evals.fakeserver import FakeOpenAIServer, inspection_responder

    with FakeOpenAIServer(latency_s=1.0, responder=inspection_responder) as fake:
        cfg = serve_config(tmp_path, backend="openai", base_url=fake.base_url, model="fake-vlm", max_retries=0)
        settings = serve_settings(tmp_path, workers=1, queue=4, request_timeout_s=60)
        with ServerThread(create_app(settings, cfg)) as srv:
            yield srv


def test_client_that_leaves_while_queued_leaks_no_slot(slow_server):
    url = slow_server.url
    first: dict = {}

    def run_first():
        with httpx.stream("POST", f"{url}/v1/detect", files=_files(), headers=STREAM, timeout=60) as reply:
            first["events"] = [line[7:] for line in reply.iter_lines() if line.startswith("event: ")]

    holder = threading.Thread(target=run_first)
    holder.start()
    _wait(url, lambda load: load["running"] == 1)
    for _ in range(3):  # three clients queue behind it and leave before their turn
        with httpx.stream("POST", f"{url}/v1/detect", files=_files(), headers=STREAM, timeout=60) as reply:
            assert reply.status_code == 200
            _wait(url, lambda load: load["waiting"] == 1)
        _wait(url, lambda load: load["waiting"] == 0)
    holder.join(60)
    assert first["events"][-1] == "done"
    _wait(url, lambda load: load["running"] == 0 and load["waiting"] == 0)
    for _ in range(2):  # with one worker, a leaked slot would leave these waiting until they time out
        reply = httpx.post(f"{url}/v1/detect", files=_files(), timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["results"][0]["status"] == "ok"


def test_timed_out_stream_holds_its_slot_until_the_thread_ends(tmp_path):
    from agent.server import create_app
    from evals.fakeserver import FakeOpenAIServer, inspection_responder

    with FakeOpenAIServer(latency_s=1.5, responder=inspection_responder) as fake:
        cfg = serve_config(tmp_path, backend="openai", base_url=fake.base_url, model="fake-vlm", max_retries=0)
        settings = serve_settings(tmp_path, workers=1, queue=2, request_timeout_s=0.8)
        with ServerThread(create_app(settings, cfg)) as srv:
            with httpx.stream("POST", f"{srv.url}/v1/detect", files=_files(), headers=STREAM, timeout=30) as reply:
                lines = list(reply.iter_lines())
            error = json.loads(lines[lines.index("event: error") + 1][6:])["error"]
            assert error["status"] == 504 and "--request-timeout" in error["fix"]
            # the client has its 504; the agent's thread is still working and still counts against --workers
            assert _load(srv.url)["running"] == 1
            _wait(srv.url, lambda load: load["running"] == 0)


def test_unexpected_errors_are_json_without_traceback_or_path(tmp_path):
    from agent.server import create_app

    home = tmp_path / "home"
    with ServerThread(create_app(serve_settings(home), serve_config(home))) as srv:
        run = httpx.post(f"{srv.url}/v1/detect", files=_files(), timeout=60).json()["results"][0]
        (home / "serve" / "runs" / run["run_id"] / "record.json").write_text("{not json")
        reply = httpx.get(f"{srv.url}/v1/runs/{run['run_id']}")
        assert reply.status_code == 500 and reply.headers["content-type"] == "application/json"
        error = reply.json()["error"]
        assert error["type"] == "internal" and "JSONDecodeError" in error["message"] and error["fix"]
        assert str(home) not in reply.text and "Traceback" not in reply.text and "line" not in reply.text


def test_uploads_are_decoded_off_the_event_loop(tmp_path):
    """Six 36 MP uploads take seconds to decode; meanwhile the server keeps answering /healthz at once."""
    import io

    import numpy as np
    from PIL import Image

    from agent.server import create_app

    buf = io.BytesIO()
    Image.fromarray(np.zeros((6000, 6000, 3), np.uint8)).save(buf, format="PNG")
    big = buf.getvalue()
    with ServerThread(create_app(serve_settings(tmp_path), serve_config(tmp_path))) as srv:
        done = threading.Event()
        result: dict = {}

        def upload():
            started = time.monotonic()
            files = [("images", (f"big{i}.png", big, "image/png")) for i in range(6)]
            # the bad references value is read after the images are decoded: a quick 400 once they are
            result["reply"] = httpx.post(f"{srv.url}/v1/detect", files=files, data={"references": "elsewhere"},
                                         timeout=120)
            result["took"] = time.monotonic() - started
            done.set()

        thread = threading.Thread(target=upload)
        thread.start()
        latencies = []
        while not done.is_set():
            started = time.monotonic()
            assert httpx.get(f"{srv.url}/healthz", timeout=60).status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
        thread.join()
        assert result["reply"].status_code == 400 and "memory" in result["reply"].json()["error"]["message"]
        assert result["took"] > 2.0 and len(latencies) > 10
        assert max(latencies) < result["took"] / 3, (max(latencies), result["took"])
