"""Chat sessions: POST /v1/sessions (an image, or a run's image, plus the first question) and
POST /v1/sessions/{id}/messages (follow-ups reusing the evidence). Sessions persist as `anomaly-agent chat`'s
do (LangGraph SqliteSaver at `sessions_path`); the image and a transcript live under
``<data_dir>/sessions/<id>``, so a session survives a server restart."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from agent.server.answer_stream import AnswerStream
from agent.server.errors import ApiError, internal_error, split_fix
from agent.server.forms import images_field, read_form, references_field, text_field
from agent.server.prune import touch
from agent.server.redact import public_verdict
from agent.server.sse import SSE_HEADERS, chunks, sse, wants_stream
from agent.server.state import ServerState, server_state

router = APIRouter(prefix="/v1/sessions", tags=["chat"])
SESSION_ID = re.compile(r"[0-9a-f]{12}")  # checked with fullmatch
DEFAULT_QUESTION = "Is this image anomalous? Explain the verdict."

SESSION_FORM = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "properties": {
            "image": {"type": "string", "format": "binary", "description": "the image (or give run_id)"},
            "run_id": {"type": "string", "description": "chat about a run's image (its category and references)"},
            "message": {"type": "string", "description": "the first question"},
            "category": {"type": "string"},
            "references": {"type": "array", "items": {"type": "string", "format": "binary"},
                           "description": "normal reference images, or the single text value 'memory'"},
        }}}}},
}


class Message(BaseModel):
    message: str = Field(..., min_length=1, max_length=4000)


def _folder(state: ServerState, session: str):
    if not isinstance(session, str) or not SESSION_ID.fullmatch(session):
        raise _missing(session)
    folder = state.sessions_dir / session
    if not (folder / "meta.json").is_file():
        raise _missing(session)
    return folder


def _missing(session: str) -> ApiError:
    return ApiError(404, "not_found", f"no chat session {session!r} on this server",
                    "start one with POST /v1/sessions (an image and a first question)")


async def new_session(state: ServerState, data: bytes, ext: str, meta: dict):
    """A new session folder holding the image and its meta (the oldest sessions beyond `max_runs` go);
    returns (session id, image path)."""
    session = uuid.uuid4().hex[:12]
    folder = state.sessions_dir / session
    folder.mkdir(parents=True)
    path = folder / f"query{ext}"
    path.write_bytes(data)
    (folder / "meta.json").write_text(json.dumps({"session": session, **meta, "created": time.time()}))
    await asyncio.to_thread(state.prune_sessions)
    return session, path


def _append(folder, role: str, text: str) -> None:
    with (folder / "transcript.jsonl").open("a") as fh:
        fh.write(json.dumps({"role": role, "text": text, "time": time.time()}) + "\n")


def transcript(folder) -> list[dict]:
    path = folder / "transcript.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def reply_body(state: ServerState, reply) -> dict:
    """A chat reply as JSON: the verdict without server paths (`public_verdict`)."""
    meta_path = state.sessions_dir / reply.session / "meta.json"
    name = json.loads(meta_path.read_text()).get("image") if meta_path.is_file() else None
    verdict = public_verdict(reply.verdict, name, state.redactor) if reply.verdict else None
    return {"session": reply.session, "answer": state.redactor.text(reply.answer), "turn": reply.turn,
            "verdict": verdict}


def run_turn_locked(state: ServerState, session: str, message: str, first: dict | None, emit=None):
    """One chat turn, in the calling (worker) thread, by a caller that holds the session's lock; the reply."""
    from agent.errors import ModelServerError, input_error_types

    folder = state.sessions_dir / session
    reply = None
    try:
        for event in state.agent.chat_stream(message, session=session, **(first or {})):
            if event["type"] == "reply":
                reply = event["reply"]
            elif emit is not None:
                emit(event)
    except input_error_types() as exc:
        cause, fix = split_fix(str(exc))
        raise ApiError(400, "invalid_request", cause, fix or "see the message") from None
    except ModelServerError as exc:
        cause, fix = split_fix(str(exc))
        raise ApiError(502, "model_error", cause, fix or "check the model server") from None
    _append(folder, "user", message)
    _append(folder, "assistant", reply.answer)
    touch(folder)  # in use: pruned last
    state.touch_session(session)
    return reply


def _call(state: ServerState, session: str, message: str, first: dict | None, emit=None):
    """A function that runs one chat turn in a worker thread (one turn per session at a time)."""

    def call():
        with state.session_lock(session):
            return run_turn_locked(state, session, message, first, emit)

    return call


async def run_turn(state: ServerState, session: str, message: str, first: dict | None):
    """One chat turn under the admission queue and time limit; returns the `ChatReply`."""
    deadline = time.monotonic() + state.settings.request_timeout_s
    return await state.run_blocking(_call(state, session, message, first), deadline)


async def turn(request: Request, state: ServerState, session: str, message: str, first: dict | None):
    """Run one chat turn (JSON, or SSE when the client accepts text/event-stream)."""
    if not wants_stream(request):
        return reply_body(state, await run_turn(state, session, message, first))
    deadline = time.monotonic() + state.settings.request_timeout_s
    state.admission.check()  # 503 now, as a status; the slot itself is taken inside the stream

    async def stream():
        yield sse("started", {"session": session})
        reply = None
        answer = AnswerStream(state.redactor)  # the model's words as it writes them (agent.server.answer_stream)
        try:
            async for event in state.stream_blocking(lambda emit: _call(state, session, message, first, emit)(),
                                                     deadline):
                if event["type"] == "result":
                    reply = event["value"]
                elif event["type"] == "answer_token":
                    if piece := answer.add(event):
                        yield sse("answer_delta", {"text": piece})
                elif event["type"] != "chat_turn":  # its verdict comes, without server paths, in "reply"
                    yield sse(event["type"], event)
        except ApiError as exc:
            yield sse("error", state.redactor.json(exc.body()))
            return
        except Exception as exc:  # noqa: BLE001 - the response has started: said in the stream
            yield sse("error", internal_error(exc).body())
            return
        body = reply_body(state, reply)
        rest = answer.finish(body["answer"])
        for piece in chunks(rest) if rest else []:
            yield sse("answer_delta", {"text": piece})
        yield sse("reply", body)
        yield sse("done", {"session": session})

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("", openapi_extra=SESSION_FORM, summary="Start a chat session about an image (first turn judges it)")
async def start_session(request: Request, state: ServerState = Depends(server_state)):
    state.require_ready()
    form = await read_form(request, max_files=state.settings.max_images * 4 + 1)
    message = text_field(form, "message", 4000) or DEFAULT_QUESTION
    run_id = text_field(form, "run_id", 64)
    if run_id:
        meta = state.runs.meta(run_id)
        image_path = state.runs.file(run_id, "image")
        data, ext, name = image_path.read_bytes(), image_path.suffix, meta.get("image") or "image"
        category = meta.get("category")
        references = "memory" if meta.get("references") == "memory" else meta.get("reference_paths")
    else:
        uploads = await images_field(form, "image", state, 1)
        data, ext, name = uploads[0].data, uploads[0].ext, uploads[0].name
        category = text_field(form, "category", 200)
        references, _ = await references_field(form, state)
    session, path = await new_session(state, data, ext, {"image": name, "category": category, "run_id": run_id})
    first = {"image": str(path), "category": category, "references": references}
    return await turn(request, state, session, message, first)


@router.post("/{session}/messages", summary="A follow-up question in a session (reuses its evidence)")
async def follow_up(session: str, body: Message, request: Request, state: ServerState = Depends(server_state)):
    state.require_ready()
    _folder(state, session)
    return await turn(request, state, session, body.message, None)


@router.get("/{session}", summary="A session's image, category and transcript")
async def get_session(session: str, state: ServerState = Depends(server_state)):
    folder = _folder(state, session)
    meta = json.loads((folder / "meta.json").read_text())
    return {**meta, "messages": transcript(folder)}
