"""An OpenAI-compatible chat endpoint: GET /v1/models, POST /v1/chat/completions.

Any OpenAI client (the `openai` package, Open WebUI) can chat about an image: the first user message with an
image (a ``data:`` URL; the server fetches no URLs) starts a chat session, which judges the image and answers;
later requests of the same conversation (the client resends the history) are follow-ups in that session,
reusing its evidence. The conversation is recognised by its first image and first text; sessions persist as
`/v1/sessions` ones do. ``stream: true`` answers as OpenAI ``chat.completion.chunk`` server-sent events.

Model ids: ``anomaly-agent`` (category and references from the request's extra fields ``category`` and
``references``: "memory"), and ``anomaly-agent/<category>`` for each category whose normals are in memory
(references from memory), so chat apps that only pick a model still get few-shot verdicts.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from agent.server.errors import ApiError
from agent.server.routes_sessions import DEFAULT_QUESTION, new_session, run_turn
from agent.server.sse import SSE_HEADERS, chunks
from agent.server.state import ServerState, server_state
from agent.server.uploads import decode_data_url

router = APIRouter(prefix="/v1", tags=["openai"])
MODEL = "anomaly-agent"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """The fields this server reads from an OpenAI chat request (others are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")
    model: str = MODEL
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    category: str | None = Field(None, max_length=200, description="extra field: the class name")
    references: Literal["memory"] | None = Field(None, description="extra field: 'memory' for memory's normals")


def _parts(message: ChatMessage) -> tuple[str, list[str]]:
    """(text, image URLs) of a message."""
    if message.content is None:
        return "", []
    if isinstance(message.content, str):
        return message.content, []
    texts, images = [], []
    for part in message.content:
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind == "image_url":
            value = part.get("image_url")
            url = value.get("url") if isinstance(value, dict) else value
            images.append(str(url or ""))
    return "\n".join(texts), images


def _categories(state: ServerState) -> list[str]:
    store = state.agent.runtime.memory() if state.agent else None
    if store is None:
        return []
    return [c for c, row in store.stats().items() if row.get("normal")]


@router.get("/models", summary="OpenAI-compatible model list")
async def models(state: ServerState = Depends(server_state)):
    import asyncio

    created = int(state.started)
    ids = [MODEL] + [f"{MODEL}/{c}" for c in await asyncio.to_thread(_categories, state)]
    return {"object": "list", "data": [{"id": i, "object": "model", "created": created, "owned_by": "anomaly-agent"}
                                       for i in ids]}


def _conversation(state: ServerState, body: ChatRequest):
    category = body.category
    references = body.references
    if body.model != MODEL:
        if not body.model.startswith(f"{MODEL}/") or not body.model.split("/", 1)[1].strip():
            raise ApiError(404, "model_not_found", f"unknown model {body.model!r}",
                           f"use '{MODEL}' or '{MODEL}/<category>' (GET /v1/models lists them)")
        category = category or body.model.split("/", 1)[1]
        references = "memory"
    users = [m for m in body.messages if m.role == "user"]
    if not users:
        raise ApiError(400, "invalid_request", "no user message", "send at least one message with role 'user'")
    first_image, first_text = None, None
    for message in users:
        text, images = _parts(message)
        if images:
            first_image, first_text = images[0], text
            break
    if first_image is None:
        raise ApiError(400, "invalid_request", "no image in the conversation",
                       "attach the image to a user message as an image_url content part with a data: URL")
    question = _parts(users[-1])[0].strip() or DEFAULT_QUESTION
    return first_image, first_text or "", question, category, references, len(users)


def _key_path(state: ServerState, key: str):
    folder = state.sessions_dir / "openai"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{key}.txt"


@router.post("/chat/completions", summary="OpenAI-compatible chat about an image (stream: true for SSE chunks)")
async def chat_completions(body: ChatRequest, request: Request, state: ServerState = Depends(server_state)):
    state.require_ready()
    image_url, first_text, question, category, references, n_users = _conversation(state, body)
    key = hashlib.sha256(f"{image_url}\0{first_text}\0{category}\0{references}".encode()).hexdigest()[:32]
    index = _key_path(state, key)
    session = index.read_text().strip() if index.is_file() else None
    first = None
    if n_users == 1 or not session or not (state.sessions_dir / session / "meta.json").is_file():
        data = decode_data_url(image_url)
        ext = (await state.check_images([(data, "image")]))[0]
        session, path = await new_session(state, data, ext, {"image": "chat image", "category": category,
                                                             "source": "openai"})
        index.write_text(session)
        first = {"image": str(path), "category": category, "references": references}
    reply = await run_turn(state, session, question, first)
    text = reply.answer
    if first is not None and reply.verdict is not None and reply.verdict.status == "ok":
        v = reply.verdict
        text = f"**{v.pred_label.upper()}**: score {v.pred_score:.2f} (threshold {v.threshold:.2f})\n\n{text}"
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if not body.stream:
        return {"id": completion_id, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                "session": session}

    def chunk(delta: dict, finish: str | None = None) -> str:
        payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(payload)}\n\n"

    async def stream():
        yield chunk({"role": "assistant", "content": ""})
        for piece in chunks(text):
            yield chunk({"content": piece})
        yield chunk({}, "stop")
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)
