"""Several OpenAI-compatible replicas of one model behind one client (``base_url`` given as a list).

`ReplicaSet` keeps, per replica URL, the requests in flight and a cool-down deadline. Each request
goes to the live replica with the fewest outstanding requests (ties: the first listed); a replica
that refuses the connection (or drops it) is taken out of rotation for ``cooldown_s`` seconds and the
request is sent at once to the next replica, each replica at most once per request. When every
replica is cooling down, the one whose cool-down ends first is tried anyway (a refusal then fails
the request, and the backend's own retry policy takes over). Timeouts are not retried here: a slow
server stays slow.

The routing lives in an httpx transport (`ReplicaTransport`, `AsyncReplicaTransport`): the OpenAI
client is built for the first URL, and each request's URL prefix is rewritten to the chosen
replica's. A request counts as outstanding until its response body is closed (streams included).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

COOLDOWN_S = 30.0
# transport errors after which the replica is taken out of rotation and the request goes elsewhere
_FAILOVER = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


@dataclass
class Replica:
    """One replica: its base URL (``http://host:8000/v1``), requests in flight, cool-down deadline."""

    url: str
    outstanding: int = 0
    cooling_until: float = 0.0
    served: int = 0
    refusals: int = 0


class ReplicaSet:
    """Fewest-outstanding-requests choice among replicas, with a cool-down for refusing ones.

    Args:
        urls: base URLs (trailing slashes are dropped); at least one.
        cooldown_s: seconds a refusing replica stays out of rotation.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, urls: list[str], cooldown_s: float = COOLDOWN_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            msg = "a replica set needs at least one URL"
            raise ValueError(msg)
        self.replicas = [Replica(u.rstrip("/")) for u in urls]
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._lock = threading.Lock()

    @property
    def primary(self) -> str:
        """The URL the client is built for (the first); requests to it are rewritten."""
        return self.replicas[0].url

    def acquire(self, exclude: set[str]) -> Replica | None:
        """The replica for the next request (its outstanding count raised), or None when all are excluded."""
        with self._lock:
            now = self.clock()
            free = [r for r in self.replicas if r.url not in exclude]
            if not free:
                return None
            live = [r for r in free if r.cooling_until <= now]
            choice = min(live, key=lambda r: r.outstanding) if live else min(free, key=lambda r: r.cooling_until)
            choice.outstanding += 1
            return choice

    def release(self, replica: Replica, ok: bool) -> None:
        """One request to `replica` ended; `ok` False: it refused or dropped the connection (cool-down)."""
        with self._lock:
            replica.outstanding -= 1
            if ok:
                replica.served += 1
            else:
                replica.refusals += 1
                replica.cooling_until = self.clock() + self.cooldown_s

    def next_for(self, request: httpx.Request, tried: set[str], last: Exception) -> Replica:
        """Acquire a replica `request` has not tried, and point the request at it.

        Raises:
            `last`: every replica has failed this request (the last failure stands).
        """
        replica = self.acquire(tried)
        if replica is None:
            raise last
        tried.add(replica.url)
        self.route(request, replica)
        return replica

    def on_close(self, replica: Replica) -> Callable[[], None]:
        """Release `replica` (ok) once, when the response body is closed."""
        return _once(lambda: self.release(replica, ok=True))

    def route(self, request: httpx.Request, replica: Replica) -> None:
        """Point `request` (built for the primary URL) at `replica`."""
        url = str(request.url)
        if replica.url != self.primary and url.startswith(self.primary):
            request.url = httpx.URL(replica.url + url[len(self.primary):])
            request.headers["Host"] = request.url.netloc.decode("ascii")

    def describe(self) -> str:
        """One line: each replica's served requests, refusals and whether it is cooling down."""
        now = self.clock()
        parts = [f"{r.url} served {r.served}, refused {r.refusals}{' (cooling down)' if r.cooling_until > now else ''}"
                 for r in self.replicas]
        return "; ".join(parts)


class _Tracked(httpx.SyncByteStream):
    def __init__(self, stream, done: Callable[[], None]) -> None:
        self._stream, self._done = stream, done

    def __iter__(self):
        yield from self._stream

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._done()


class _AsyncTracked(httpx.AsyncByteStream):
    def __init__(self, stream, done: Callable[[], None]) -> None:
        self._stream, self._done = stream, done

    async def __aiter__(self):
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._done()


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    called = [False]

    def run() -> None:
        if not called[0]:
            called[0] = True
            fn()

    return run


class ReplicaTransport(httpx.BaseTransport):
    """A sync httpx transport that spreads requests over a `ReplicaSet` (see the module docstring)."""

    def __init__(self, replicas: ReplicaSet, inner: httpx.BaseTransport | None = None) -> None:
        self.replicas = replicas
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        tried: set[str] = set()
        last: Exception = httpx.ConnectError("no replica answered", request=request)
        while True:
            replica = self.replicas.next_for(request, tried, last)
            try:
                response = self.inner.handle_request(request)
            except _FAILOVER as exc:  # refused or dropped: cool it down, try the next replica
                self.replicas.release(replica, ok=False)
                last = exc
                continue
            except BaseException:
                self.replicas.release(replica, ok=True)
                raise
            response.stream = _Tracked(response.stream, self.replicas.on_close(replica))
            return response

    def close(self) -> None:
        self.inner.close()


class AsyncReplicaTransport(httpx.AsyncBaseTransport):
    """The async twin of `ReplicaTransport`."""

    def __init__(self, replicas: ReplicaSet, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.replicas = replicas
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        tried: set[str] = set()
        last: Exception = httpx.ConnectError("no replica answered", request=request)
        while True:
            replica = self.replicas.next_for(request, tried, last)
            try:
                response = await self.inner.handle_async_request(request)
            except _FAILOVER as exc:  # refused or dropped: cool it down, try the next replica
                self.replicas.release(replica, ok=False)
                last = exc
                continue
            except BaseException:
                self.replicas.release(replica, ok=True)
                raise
            response.stream = _AsyncTracked(response.stream, self.replicas.on_close(replica))
            return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def replica_clients(urls: list[str], timeout_s: float,
                    cooldown_s: float = COOLDOWN_S) -> tuple[ReplicaSet, httpx.Client, httpx.AsyncClient]:
    """A replica set and the sync and async httpx clients routing through it (one set: shared counts)."""
    replicas = ReplicaSet(urls, cooldown_s)
    return (replicas, httpx.Client(transport=ReplicaTransport(replicas), timeout=timeout_s),
            httpx.AsyncClient(transport=AsyncReplicaTransport(replicas), timeout=timeout_s))
