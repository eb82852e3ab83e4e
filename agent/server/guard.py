"""ASGI middleware in front of every route, before any of the body is read.

`RequestGuard` answers, in this order:

- 403 when the server has no api key and ``Host`` is not a loopback name (localhost, 127.0.0.1, [::1], any
  port) or an ``--allowed-host`` value: a page elsewhere cannot reach this server through DNS rebinding.
- 403 when a state-changing request (POST, PUT, PATCH, DELETE) carries an ``Origin`` other than the server's
  own (the scheme and the request's ``Host``) or a ``--cors-origin`` value, and for ``Origin: null``: a page
  elsewhere cannot write to the memory or run detections with a plain form. Requests without ``Origin``
  (curl, scripts, SDKs) are unaffected.
- 401 when the server has an api key and a ``/v1`` request does not carry it (the body stays unread).
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from agent.server.errors import ApiError
from agent.server.settings import ServeSettings, is_loopback

WRITES = ("POST", "PUT", "PATCH", "DELETE")
DEFAULT_PORTS = {"http": 80, "https": 443}


def split_host(value: str) -> tuple[str, int | None] | None:
    """("name", port or None) of a Host header value ("localhost:8080", "[::1]:80"); None when malformed."""
    try:
        parts = urlsplit(f"//{value}")
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None


def origin_of(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin value, default ports filled in; None when it is not one."""
    try:
        parts = urlsplit(value.strip())
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not host or port is None:
        return None
    return scheme, host, port


def bearer_ok(header: str | None, key: str) -> bool:
    """Whether an ``Authorization`` header carries the key (as ``Bearer <key>``), in constant time."""
    scheme, _, given = (header or "").partition(" ")
    given = given.strip() if scheme.lower() == "bearer" else ""
    return secrets.compare_digest(given.encode(), key.encode())


def missing_key() -> ApiError:
    return ApiError(401, "unauthorized", "missing or wrong api key",
                    "send 'Authorization: Bearer <api key>' (the key the server was started with)",
                    headers={"WWW-Authenticate": "Bearer"})


class RequestGuard:
    """ASGI middleware: the Host, Origin and api-key checks above, each a JSON error naming the fix."""

    def __init__(self, app, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings
        self.allowed_hosts = {h.lower().strip("[]") for h in settings.allowed_hosts}
        if settings.host not in ("0.0.0.0", "::", ""):
            self.allowed_hosts.add(settings.host.lower().strip("[]"))
        self.origins = {o for o in (origin_of(c) for c in settings.cors_origins) if o}
        self.any_origin = "*" in settings.cors_origins  # the operator's explicit choice (CORS allows all too)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        error = self.check(scope, headers)
        if error is not None:
            return await error.send_asgi(send)
        return await self.app(scope, receive, send)

    def check(self, scope, headers: dict[str, str]) -> ApiError | None:
        host = split_host(headers.get("host", ""))
        if not self.settings.api_key and (host is None or not self._host_ok(host[0])):
            shown = headers.get("host", "")[:100]
            return ApiError(403, "forbidden_host", f"Host {shown!r} is not this server's name",
                            "open the server as http://127.0.0.1:PORT/ or http://localhost:PORT/, or start it with "
                            "--allowed-host NAME (or with --api-key KEY, which allows any Host)")
        if scope["method"] in WRITES and "origin" in headers and not self._origin_ok(scope, headers):
            shown = headers["origin"][:100]
            return ApiError(403, "forbidden_origin", f"a {scope['method']} from the web origin {shown!r} is refused "
                            "(another site's page cannot write to this server)",
                            "send the request from the server's own page, without an Origin header (curl, "
                            "scripts, SDKs), or start the server with --cors-origin ORIGIN to allow that site")
        if self.settings.api_key and scope["path"].startswith("/v1/") and \
                not bearer_ok(headers.get("authorization"), self.settings.api_key):
            return missing_key()
        return None

    def _host_ok(self, name: str) -> bool:
        return is_loopback(name) or name in self.allowed_hosts

    def _origin_ok(self, scope, headers: dict[str, str]) -> bool:
        origin = origin_of(headers["origin"])
        if origin is None:  # "null" (a sandboxed page, a file: URL) or anything malformed
            return False
        if origin in self.origins or self.any_origin:
            return True
        host = split_host(headers.get("host", ""))
        if host is None:
            return False
        scheme = scope.get("scheme", "http")
        own = (scheme, host[0], host[1] or DEFAULT_PORTS.get(scheme))
        return origin == own

