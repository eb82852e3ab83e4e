"""A bounded queue in front of the agent: `workers` jobs run at once, `queue` more may wait, the rest get
503 with Retry-After; every job has a time limit (queue wait included) after which the client gets 504."""

from __future__ import annotations

import asyncio
import math
import time
from contextlib import asynccontextmanager

from agent.server.errors import ApiError


class Admission:
    """Admission control for one process (asyncio; not thread-safe, used from the event loop only)."""

    def __init__(self, workers: int, queue: int, timeout_s: float) -> None:
        self.workers, self.queue, self.timeout_s = workers, queue, timeout_s
        self._slots = asyncio.Semaphore(workers)
        self._intake = asyncio.Semaphore(workers)
        self.waiting = 0
        self.running = 0
        self._recent_s: list[float] = []

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the queue ahead divided among the workers, times the recent
        median job time (at least 1)."""
        typical = sorted(self._recent_s)[len(self._recent_s) // 2] if self._recent_s else 1.0
        return max(1, math.ceil(typical * (self.waiting + 1) / self.workers))

    def deadline(self) -> float:
        return time.monotonic() + self.timeout_s

    def check(self) -> None:
        """Raise ApiError 503 (with Retry-After) when the queue is full."""
        if self.running + self.waiting >= self.workers + self.queue:
            raise ApiError(503, "busy", f"the server is busy ({self.running} running, {self.waiting} waiting)",
                           "retry after the Retry-After seconds, or start the server with more --workers or a "
                           "longer --queue", headers={"Retry-After": str(self.retry_after())})

    async def acquire(self, deadline: float | None = None) -> None:
        """Take one worker slot (pair with `release`).

        Raises:
            ApiError: 503 with Retry-After when the queue is full, 504 when the wait passes the deadline.
        """
        self.check()
        deadline = deadline or self.deadline()
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise timeout_error(self.timeout_s) from None
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self, started: float | None = None) -> None:
        self.running -= 1
        self._slots.release()
        if started is not None:
            self._recent_s = [*self._recent_s[-31:], time.monotonic() - started]

    @asynccontextmanager
    async def slot(self, deadline: float | None = None):
        """Hold one worker slot for the block (see `acquire`)."""
        await self.acquire(deadline)
        started = time.monotonic()
        try:
            yield
        finally:
            self.release(started)


    @asynccontextmanager
    async def intake(self):
        """Decode a request's uploads in the block: 503 when the queue is full; the request counts as waiting
        meanwhile (so the queue's bound covers it), and at most `workers` requests decode at once (apart from the
        worker slots, so a request does not queue twice)."""
        self.check()
        self.waiting += 1
        try:
            async with self._intake:
                yield
        finally:
            self.waiting -= 1


def timeout_error(limit_s: float) -> ApiError:
    return ApiError(504, "timeout", f"the request took longer than the server's limit of {limit_s:g} s",
                    "retry with fewer images or fewer references, or start the server with a larger "
                    "--request-timeout")
