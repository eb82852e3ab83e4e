"""An OpenAI-compatible chat endpoint: GET /v1/models, POST /v1/chat/completions.

Any OpenAI client (the `openai` package, Open WebUI) can chat about an image: the first user message with an
image (a ``data:`` URL; the server fetches no URLs) starts a chat session, which judges the image and answers;
later requests of the same conversation (the client resends the history) are follow-ups in that session, and a
new image in a later user message starts a new verdict. Which session a request continues is decided by its
whole prior history (`agent.server.openai_convo`); an edited or regenerated turn branches. Replies carry the
``session`` id; a client may echo it as the extra field ``session``.

``stream: true`` answers as ``chat.completion.chunk`` server-sent events: the role at once, the agent's steps
in ``delta.reasoning_content`` while it works, then the verdict line and the answer's words as the model writes
them (`agent.server.answer_stream`; the offline answer in pieces); ``usage`` holds the turn's model tokens (the
last chunk when ``stream_options.include_usage`` is set). Sampling fields are ignored; ``n > 1``, a json_schema
``response_format``, ``tools`` and a forced ``tool_choice`` are refused (400, OpenAI's error shape).

Model ids: ``anomaly-agent`` (category and references from the request's extra fields ``category`` and
``references``: "memory"), and ``anomaly-agent/<category>`` for each category whose normals are in memory
(references from memory), so chat apps that only pick a model still get few-shot verdicts.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from agent.server.answer_stream import AnswerStream
from agent.server.errors import ApiError, internal_error
from agent.server.openai_turn import file_history, ok_verdict, plan, verdict_heading, worker
from agent.server.sse import SSE_HEADERS, chunks
from agent.server.state import ServerState, server_state

router = APIRouter(prefix="/v1", tags=["openai"])
MODEL = "anomaly-agent"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields this server reads from an OpenAI chat request (sampling fields are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")
    model: str = MODEL
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, description="only 1")
    response_format: dict[str, Any] | None = Field(None, description="text or json_object; json_schema is refused")
    tools: list[dict[str, Any]] | None = Field(None, description="refused: the agent's tools are its own")
    tool_choice: str | dict[str, Any] | None = Field(None, description="only none or auto")
    category: str | None = Field(None, max_length=200, description="extra field: the class name")
    references: Literal["memory"] | None = Field(None, description="extra field: 'memory' for memory's normals")
    session: str | None = Field(None, pattern=r"^[0-9a-f]{12}$",
                                description="extra field: the session id a reply carried (picks the conversation "
                                            "when two have the same history)")


def _refuse(param: str, message: str, fix: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message, fix, param=param, code="unsupported_parameter")


def check_supported(body: ChatRequest) -> None:
    """400 (OpenAI's shape) for what this endpoint cannot honour."""
    if body.n is not None and body.n != 1:
        raise _refuse("n", f"n={body.n}: this endpoint returns one choice", "omit n or send n=1")
    if (body.response_format or {}).get("type") == "json_schema":
        raise _refuse("response_format", "response_format json_schema is not supported (the answer is prose)",
                      "omit response_format (the verdict is in the reply's first line)")
    if body.tools:
        raise _refuse("tools", "tools are not supported: the agent calls its own inspection tools",
                      "omit tools and tool_choice")
    if body.tool_choice not in (None, "none", "auto"):
        raise _refuse("tool_choice", "a forced tool_choice is not supported", "omit tool_choice")
    if body.messages[-1].role != "user":
        raise ApiError(400, "invalid_request_error", f"the last message has role {body.messages[-1].role!r}",
                       "end the messages with the user's question", param="messages", code="invalid_value")


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



def _scope(body: ChatRequest) -> tuple[str | None, str | None]:
    """(category, references) the model id and extra fields ask for."""
    if body.model == MODEL:
        return body.category, body.references
    if not body.model.startswith(f"{MODEL}/") or not body.model.split("/", 1)[1].strip():
        raise ApiError(404, "model_not_found", f"unknown model {body.model!r}",
                       f"use '{MODEL}' or '{MODEL}/<category>' (GET /v1/models lists them)", param="model",
                       code="model_not_found")
    return body.category or body.model.split("/", 1)[1], "memory"


def step_line(event: dict) -> str | None:
    """One line of reasoning for an agent step (None for steps not worth a line)."""
    kind = event.get("type")
    if kind == "step":
        return f"{event.get('node')}: {event.get('references', 0)} reference(s)"
    if kind == "survey_started":
        return f"survey: {', '.join(event.get('tools') or []) or 'no tools'}"
    if kind == "tool":
        score = event.get("score")
        return f"{event.get('tool')}: {'done' if score is None else f'score {score:.2f}'}. {event.get('summary', '')}".strip()
    if kind == "model_turn":
        calls = [c["name"] for c in event.get("tool_calls") or []]
        return f"model: {'calls ' + ', '.join(calls) if calls else 'answers'}"
    if kind == "reflect":
        return "reflect: checking the evidence again"
    return None


def _verdict_line(v) -> str | None:
    """The reasoning line of a turn's verdict (a `Verdict` or its JSON dict); None without an ok one."""
    v = ok_verdict(v)
    if v is None:
        return None
    return f"verdict: {v.pred_label} (score {v.pred_score:.2f}, threshold {v.threshold:.2f})"


@router.post("/chat/completions", summary="OpenAI-compatible chat about an image (stream: true for SSE chunks)")
async def chat_completions(body: ChatRequest, state: ServerState = Depends(server_state)):
    state.require_ready()
    check_supported(body)
    category, references = _scope(body)
    turn = await plan(state, body, category, references)
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    deadline = time.monotonic() + state.settings.request_timeout_s
    if not body.stream:
        result = await state.run_blocking(worker(state, turn), deadline)
        return {"id": completion_id, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                             "finish_reason": "stop"}],
                "usage": result["usage"], "session": turn.session}
    state.admission.check()  # 503 now, as a status; the slot itself is taken inside the stream
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "session": turn.session,
                   **extra}
        return f"data: {json.dumps(payload)}\n\n"

    async def stream():
        yield chunk({"role": "assistant", "content": ""})
        result = answer = None
        try:
            async for event in state.stream_blocking(worker(state, turn), deadline):
                if event["type"] == "result":
                    result = event["value"]
                elif event["type"] == "chat_turn":  # the answer begins: the verdict, then the model's words
                    heading = verdict_heading(event["verdict"]) if turn.new_verdict else ""
                    if heading:
                        yield chunk({"reasoning_content": _verdict_line(event["verdict"]) + "\n"})
                        yield chunk({"content": heading})
                    answer = AnswerStream(state.redactor, heading)
                elif event["type"] == "answer_token":
                    if answer is not None and (piece := answer.add(event)):
                        yield chunk({"content": piece})
                elif (line := step_line(event)) is not None:
                    yield chunk({"reasoning_content": state.redactor.text(line) + "\n"})
        except Exception as exc:  # noqa: BLE001 - the response has started: OpenAI's error event, then the end
            error = exc if isinstance(exc, ApiError) else internal_error(exc)
            body_ = state.redactor.json(error.body())
            body_["error"].setdefault("param", None)
            body_["error"].setdefault("code", error.kind)
            yield f"data: {json.dumps(body_)}\n\n"
            yield "data: [DONE]\n\n"
            return
        if answer is None:  # no answer phase was seen (nothing streamed): the whole text in pieces
            if (line := _verdict_line(result["reply"].verdict)) is not None and turn.new_verdict:
                yield chunk({"reasoning_content": line + "\n"})
            for piece in chunks(result["text"]):
                yield chunk({"content": piece})
        else:
            text = result["text"]
            rest = answer.finish(text[len(answer.prefix):] if text.startswith(answer.prefix) else text)
            for piece in chunks(rest) if rest else []:  # the offline answer, or what the model's stream left
                yield chunk({"content": piece})
            if answer.shown != text:  # the client holds other words than the reply: its next request says so
                await asyncio.to_thread(file_history, state, turn, answer.shown, result.get("checkpoint"))
        yield chunk({}, "stop")
        if include_usage:
            payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                       "model": body.model, "choices": [], "usage": result["usage"]}
            yield f"data: {json.dumps(payload)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)
