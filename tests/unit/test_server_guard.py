"""RequestGuard's decisions on their own (the HTTP behaviour is tested in tests/e2e/test_serve_guard.py)."""

from __future__ import annotations

from agent.server.guard import RequestGuard, bearer_ok, origin_of, split_host
from agent.server.settings import ServeSettings


def _check(settings: ServeSettings, method: str, headers: dict[str, str], path: str = "/v1/detect"):
    error = RequestGuard(None, settings).check({"method": method, "path": path, "scheme": "http"}, headers)
    return error.kind if error else None


def test_parsing_helpers():
    assert split_host("[::1]:8080") == ("::1", 8080) and split_host("LocalHost") == ("localhost", None)
    assert split_host("a:b:c") is None
    assert origin_of("http://127.0.0.1") == ("http", "127.0.0.1", 80) and origin_of("null") is None
    assert origin_of("file://") is None and origin_of("https://x.example:444") == ("https", "x.example", 444)
    assert bearer_ok("Bearer k", "k") and bearer_ok("bearer k", "k") and not bearer_ok("Basic k", "k")
    assert not bearer_ok(None, "k") and not bearer_ok("Bearer kk", "k")


def test_origins_hosts_and_wildcard():
    plain = ServeSettings()
    own = {"host": "127.0.0.1:8080"}
    assert _check(plain, "POST", {**own, "origin": "http://127.0.0.1:8080"}) is None
    assert _check(plain, "POST", {**own, "origin": "http://localhost:8080"}) == "forbidden_origin"
    assert _check(plain, "DELETE", {**own, "origin": "null"}) == "forbidden_origin"
    assert _check(plain, "GET", {**own, "origin": "http://evil.example"}) is None
    assert _check(plain, "GET", {"host": "evil.example"}) == "forbidden_host"
    assert _check(plain, "GET", {}) == "forbidden_host"  # no Host at all
    anyone = ServeSettings(cors_origins=["*"])
    assert _check(anyone, "POST", {**own, "origin": "http://evil.example"}) is None
    assert _check(anyone, "POST", {**own, "origin": "null"}) == "forbidden_origin"
    bound = ServeSettings(host="192.168.1.5", api_key="k")
    assert _check(bound, "GET", {"host": "anything.example"}, "/healthz") is None
    assert _check(bound, "POST", {"host": "x", "authorization": "Bearer k"}) is None
    assert _check(bound, "POST", {"host": "x", "authorization": "Bearer no"}) == "unauthorized"
    named = ServeSettings(host="box.lan", insecure_no_auth=True)
    assert _check(named, "GET", {"host": "box.lan:8080"}, "/") is None
