"""The Host, Origin and api-key checks of `anomaly-agent serve` (agent/server/guard.py) over real HTTP:
a page elsewhere cannot write with a plain form, DNS rebinding meets a 403, and a wrong key is refused before
the body is read."""

from __future__ import annotations

import select
import socket
import time

import httpx
import pytest

from tests.server_fixtures import ServerThread, serve_config, serve_settings, texture_png

REFS = [("references", (f"ref{i}.png", texture_png(i), "image/png")) for i in range(2)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from agent.server import create_app

    home = tmp_path_factory.mktemp("guard")
    settings = serve_settings(home, allowed_hosts=["inspect.lan"], cors_origins=["https://dash.example"])
    with ServerThread(create_app(settings, serve_config(home))) as srv:
        yield srv


def _example_form(seed: int):
    return {"files": {"image": ("n.png", texture_png(seed), "image/png")}, "data": {"category": "guard", "label": "normal"}}


def _count(server) -> int:
    stats = httpx.get(f"{server.url}/v1/memory/stats").json()["categories"]
    return stats.get("guard", {}).get("normal", 0)


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1"])
def test_cross_origin_form_posts_are_refused(server, origin):
    before = _count(server)
    reply = httpx.post(f"{server.url}/v1/memory/examples", headers={"Origin": origin}, **_example_form(30))
    assert reply.status_code == 403, reply.text
    error = reply.json()["error"]
    assert error["type"] == "forbidden_origin" and "--cors-origin" in error["fix"]
    detect = httpx.post(f"{server.url}/v1/detect", headers={"Origin": origin},
                        files=[("images", ("q.png", texture_png(31), "image/png")), *REFS], timeout=60)
    assert detect.status_code == 403 and detect.json()["error"]["type"] == "forbidden_origin"
    assert _count(server) == before  # nothing was written


def test_same_origin_allowed_origin_and_no_origin_are_served(server):
    own = httpx.post(f"{server.url}/v1/memory/examples", headers={"Origin": server.url}, **_example_form(32))
    assert own.status_code == 200, own.text
    localhost = f"http://localhost:{server.port}"
    named = httpx.post(f"{localhost}/v1/memory/examples", headers={"Origin": localhost}, **_example_form(33))
    assert named.status_code == 200, named.text
    listed = httpx.post(f"{server.url}/v1/memory/examples", headers={"Origin": "https://dash.example"},
                        **_example_form(34))
    assert listed.status_code == 200, listed.text
    plain = httpx.post(f"{server.url}/v1/memory/examples", **_example_form(35))  # curl, scripts, SDKs
    assert plain.status_code == 200, plain.text
    # reading is not writing: a GET with a foreign Origin is answered (without CORS headers for it)
    read = httpx.get(f"{server.url}/v1/runs", headers={"Origin": "http://evil.example"})
    assert read.status_code == 200 and "access-control-allow-origin" not in read.headers


def test_cross_origin_delete_is_refused(server):
    reply = httpx.delete(f"{server.url}/v1/memory/notes/{'0' * 16}", headers={"Origin": "http://evil.example"})
    assert reply.status_code == 403 and reply.json()["error"]["type"] == "forbidden_origin"


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", f"attacker.test:{8080}", "127.0.0.1.evil.example"])
def test_foreign_host_is_refused(server, host):
    for method, path in (("GET", "/"), ("GET", "/v1/runs"), ("POST", "/v1/memory/notes")):
        reply = httpx.request(method, f"{server.url}{path}", headers={"Host": host},
                              json={"category": "guard", "text": "planted"})
        assert reply.status_code == 403, (method, path, reply.text)
        error = reply.json()["error"]
        assert error["type"] == "forbidden_host" and "--allowed-host" in error["fix"]


def test_loopback_and_allowed_hosts_are_served(server):
    for host in ("127.0.0.1", f"127.0.0.1:{server.port}", f"localhost:{server.port}", "[::1]:8080",
                 "inspect.lan", f"INSPECT.lan:{server.port}"):
        assert httpx.get(f"{server.url}/healthz", headers={"Host": host}).status_code == 200, host


def _raw_post(port: int, headers: dict[str, str], body_bytes: int, total: int) -> tuple[bytes, int]:
    """POST announcing `total` body bytes: send the head, wait up to 3 s for an answer, else send `body_bytes` of
    the body and wait 3 s more. Returns (the answer's first bytes, or b"", and how many body bytes were sent)."""
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"127.0.0.1:{port}", "Content-Length": str(total),
                                                 "Content-Type": "multipart/form-data; boundary=x", **headers}.items())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST /v1/detect HTTP/1.1\r\n{head}\r\n".encode())
        sent = 0
        for _ in range(2):
            if select.select([sock], [], [], 3.0)[0]:
                return sock.recv(4096), sent
            if sent == 0:
                sock.sendall(b"\0" * body_bytes)
                sent = body_bytes
        return b"", sent


def test_wrong_key_is_refused_before_the_body_is_read(tmp_path):
    from agent.server import create_app

    settings = serve_settings(tmp_path, api_key="secret", max_upload_mb=25.0)
    with ServerThread(create_app(settings, serve_config(tmp_path))) as srv:
        total = 20 * 1000 * 1000
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            started = time.monotonic()
            reply, sent = _raw_post(srv.port, headers, 32 * 1024, total)
            # the server answered while 19.97 MB were still unsent: it never waited for (or read) them
            assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
            assert sent < 64 * 1024 and time.monotonic() - started < 3
            assert b'"unauthorized"' in reply and b"Bearer" in reply
        # the right key: the server waits for the body (no answer to the head, nor after 32 KiB of it)
        reply, sent = _raw_post(srv.port, {"Authorization": "Bearer secret"}, 32 * 1024, total)
        assert reply == b"" and sent == 32 * 1024
        assert httpx.get(f"{srv.url}/v1/runs", headers={"Authorization": "Bearer secret"}).status_code == 200
        # /readyz: a plain ready without the key, the details with it
        assert httpx.get(f"{srv.url}/readyz").json() == {"ready": True}
        assert httpx.get(f"{srv.url}/readyz", headers={"Authorization": "Bearer wrong"}).json() == {"ready": True}
        details = httpx.get(f"{srv.url}/readyz", headers={"Authorization": "Bearer secret"}).json()
        assert details["ready"] is True and details["backend"] == "none" and "workers" in details
        # with a key the Host check is off (the key already defeats DNS rebinding)
        assert httpx.get(f"{srv.url}/healthz", headers={"Host": "box.example"}).status_code == 200
