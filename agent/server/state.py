"""What every route shares: the one warm `AnomalyAgent`, the run store, the admission queue, settings."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request

from agent.config import AgentConfig
from agent.coverage import CoverageTally
from agent.server.admission import Admission, timeout_error
from agent.server.errors import ApiError
from agent.server.redact import Redactor
from agent.server.runs import RunStore
from agent.server.settings import ServeSettings

log = logging.getLogger(__name__)
_DONE = object()


class ServerState:
    """The process-wide state of `anomaly-agent serve`.

    Attributes:
        agent: the warm `AnomalyAgent` (None until `warm_up` has built it).
        ready / problem: warm-up finished / why it failed.
        coverage: recent verdicts per (category, references), for the detect record's ``coverage_hint``.
    """

    def __init__(self, settings: ServeSettings, config: AgentConfig, agent=None) -> None:
        self.settings = settings
        self.config = config
        self.agent = agent
        self.ready = False
        self.problem: str | None = None
        self.redactor = Redactor.for_server(settings, config)
        self.runs = RunStore(settings.data_dir, settings.max_runs, self.redactor)
        self.coverage = CoverageTally()
        self.sessions_dir = Path(settings.data_dir) / "sessions"
        self.sessions_dir.mkdir(parents=True, exist_ok=True)
        self.admission = Admission(settings.workers, settings.queue, settings.request_timeout_s)
        self.started = time.time()
        self._session_locks: dict[str, threading.Lock] = {}
        self._live_sessions: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._endpoint: tuple[float, dict] | None = None

    # start -----------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Build the agent (unless given), open (or create) the memory store, and judge one tiny synthetic
        image against two synthetic references, so weights and the embedder are loaded before the first
        request. Runs in a thread; sets `ready` or `problem`."""
        try:
            from agent.api import AnomalyAgent

            if not self.config.memory_host and not self.config.memory_path.exists():
                from memory.store import open_store

                open_store(self.config, create=True).close()
            if self.agent is None:
                self.agent = AnomalyAgent.from_config(self.config)
            self.agent.runtime.embedder()
            folder = Path(self.settings.data_dir) / "warmup"
            folder.mkdir(parents=True, exist_ok=True)
            refs = []
            for i in range(2):
                path = folder / f"ref{i}.png"
                if not path.is_file():
                    from PIL import Image

                    rng = np.random.default_rng(i)
                    Image.fromarray(rng.integers(90, 160, (64, 64, 3), dtype=np.uint8)).save(path)
                refs.append(str(path))
            verdict = self.agent.detect(Path(refs[0]).read_bytes(), category=None, references=refs[1:])
            if verdict.status != "ok":
                log.warning("warm-up verdict failed: %s", verdict.error)
            self.ready = True
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and every request
            log.exception("warm-up failed")
            self.problem = f"{type(exc).__name__}: {exc}"

    def require_ready(self):
        """The agent, or ApiError 503 while warming up (or 500-free 503 when warm-up failed)."""
        if self.problem:
            raise ApiError(503, "not_ready", f"the agent failed to start: {self.problem}",
                           "fix the configuration named above and restart `anomaly-agent serve`")
        if not self.ready:
            raise ApiError(503, "warming_up", "the agent is still loading its weights",
                           "retry in a few seconds (GET /readyz says when it is ready)", headers={"Retry-After": "2"})
        return self.agent

    def memory(self):
        """The agent's memory store, or ApiError 503 when it has none."""
        store = self.require_ready().runtime.memory()
        if store is None:
            raise ApiError(503, "no_memory", "the server has no memory store",
                           "set memory_path (ANOMALY_AGENT_MEMORY_PATH) to a writable folder and restart")
        return store

    async def endpoint_status(self) -> dict:
        """Whether the model endpoint answers (checked at most every 10 s); tools-only is stated as such."""
        agent = self.agent
        name = agent.backend.name if agent else None
        if name != "openai":
            return {"backend": name, "model": getattr(agent.backend, "model_id", None) if agent else None,
                    "tools_only": name == "none", "note": agent.backend_note if agent else None}
        if self._endpoint and time.monotonic() - self._endpoint[0] < 10:
            return self._endpoint[1]
        import httpx

        url = f"{self.config.base_url}/models"
        try:
            async with httpx.AsyncClient(timeout=3.0) as client:
                reply = await client.get(url, headers={"Authorization": f"Bearer {self.config.api_key.get_secret_value()}"})
            reachable, detail = reply.status_code == 200, f"HTTP {reply.status_code}"
        except httpx.HTTPError as exc:
            reachable, detail = False, f"{type(exc).__name__}: {exc}"
        status = {"backend": "openai", "model": agent.backend.model_id, "tools_only": False,
                  "endpoint": url, "endpoint_reachable": reachable, "endpoint_detail": detail}
        self._endpoint = (time.monotonic(), status)
        return status

    # jobs ------------------------------------------------------------------------------------
    async def run_blocking(self, fn: Callable[[], Any], deadline: float | None = None) -> Any:
        """Run `fn` in a worker thread under one admission slot and the request's time limit.

        On timeout the client gets 504 at once; the slot is held until the thread is done, so the queue's
        bound stays true.
        """
        await self.admission.acquire(deadline)
        started = time.monotonic()
        future = asyncio.ensure_future(asyncio.to_thread(fn))
        future.add_done_callback(lambda _f: self.admission.release(started))
        remaining = max(0.0, (deadline or started + self.settings.request_timeout_s) - time.monotonic())
        try:
            return await asyncio.wait_for(asyncio.shield(future), remaining)
        except asyncio.TimeoutError:
            raise timeout_error(self.settings.request_timeout_s) from None

    async def stream_blocking(self, fn: Callable[[Callable[[dict], None]], Any],
                              deadline: float | None = None) -> AsyncIterator[dict]:
        """Run ``fn(emit)`` in a worker thread under one admission slot; yield what it emits as it comes, then
        ``{"type": "result", "value": <what fn returned>}`` (fn's exception is raised instead).

        The slot is taken here, inside the stream (a client that leaves while queued never holds one), and given
        back only when the thread has finished, also when the client leaves or the time limit passes (504), so
        no more than `workers` jobs ever run at once.
        """
        deadline = deadline or time.monotonic() + self.settings.request_timeout_s
        await self.admission.acquire(deadline)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(event: dict) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        def finished(done) -> None:
            self.admission.release(started)
            if not done.cancelled():
                done.exception()  # retrieved here: a client that left never reads it
            queue.put_nowait(_DONE)

        future = asyncio.ensure_future(asyncio.to_thread(fn, emit))
        future.add_done_callback(finished)
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise timeout_error(self.settings.request_timeout_s) from None
            if item is _DONE:
                break
            yield item
        yield {"type": "result", "value": future.result()}

    async def check_images(self, items: list[tuple[bytes, str]]) -> list[str]:
        """`check_image` of each (bytes, name) in a worker thread under `Admission.intake` (decoding a 40 MP
        upload takes a while: the event loop keeps serving, and the queue's bound covers it); their extensions."""
        from agent.server.uploads import check_image

        async with self.admission.intake():
            return await asyncio.to_thread(lambda: [check_image(data, name, self.config) for data, name in items])

    # chat sessions ---------------------------------------------------------------------------
    def session_lock(self, session: str) -> threading.Lock:
        with self._lock:
            return self._session_locks.setdefault(session, threading.Lock())

    def prune_sessions(self) -> list[str]:
        """Remove the oldest chat sessions beyond `max_runs` (their folders, saved history and lock), and the
        OpenAI conversation index entries that pointed to them; returns the ids removed."""
        from agent.server import openai_convo
        from agent.server.prune import prune_oldest
        from agent.server.routes_sessions import SESSION_ID

        removed = prune_oldest(self.sessions_dir, self.settings.max_runs, SESSION_ID)
        if not removed:
            return []
        with self._lock:
            for session in removed:
                self._session_locks.pop(session, None)
                self._live_sessions.pop(session, None)
        if self.agent is not None:
            for session in removed:
                self.agent.forget_session(session)
        openai_convo.prune(self.sessions_dir / "openai", self.sessions_dir)
        return removed

    def touch_session(self, session: str) -> None:
        """Keep at most `live_sessions` sessions' images in memory; older ones reload from disk on their next
        turn (the chat graph's restore step)."""
        with self._lock:
            self._live_sessions[session] = None
            self._live_sessions.move_to_end(session)
            while len(self._live_sessions) > self.settings.live_sessions:
                old, _ = self._live_sessions.popitem(last=False)
                self.agent.runtime.end_run(old)


def server_state(request: Request) -> ServerState:
    return request.app.state.server
