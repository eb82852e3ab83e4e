"""Server-sent events: ``event: <type>`` and one JSON ``data:`` line per event."""

from __future__ import annotations

import json

from fastapi import Request

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def wants_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


def chunks(text: str, size: int = 3) -> list[str]:
    """`text` in pieces of about `size` words (spaces kept), for streamed answers."""
    words = text.split(" ")
    return [" ".join(words[i:i + size]) + (" " if i + size < len(words) else "") for i in range(0, len(words), size)]
