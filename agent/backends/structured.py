"""Schema-constrained answers from any chat model, with one repair turn.

OpenAI-compatible models are asked with ``response_format`` json_schema (strict); a server that
rejects it with an HTTP 400 about response_format / structured output is asked again in JSON mode,
then in plain text. Any other 400 (too many images, a bad parameter) is raised at once. Other backends answer in
text. In every mode the JSON object is taken from the content (```json fences tolerated) and
validated with pydantic; a failure gets one repair turn that quotes the validation error, then
`ModelOutputError`. Token logprobs are requested from models with a ``logprobs`` setting
(OpenAI-compatible servers, the transformers backend) and stay in
``message.response_metadata["logprobs"]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableBinding
from pydantic import BaseModel, ValidationError

from agent.backends.errors import (
    ModelOutputError,
    ModelRequestRejectedError,
    is_structured_output_rejection,
)
from agent.backends.messages import merge_system_messages

MODES = ("json_schema", "json_mode", "text")
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
TOP_LOGPROBS = 5


@dataclass
class StructuredResult:
    """A validated answer.

    Attributes:
        parsed: the schema instance.
        message: the AI message it came from (logprobs in ``response_metadata`` when asked).
        repaired: True when the first answer failed validation and the repair turn fixed it.
        mode: "json_schema" (server-constrained), "json_mode" or "text".
    """

    parsed: BaseModel
    message: AIMessage
    repaired: bool
    mode: str


class _AnswerInvalid(ValueError):
    """The answer is not a valid instance of the schema; the text says what is wrong."""


def message_text(message: BaseMessage) -> str:
    """The text of a message whose content is a string or a list of blocks."""
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(
        b if isinstance(b, str) else str(b.get("text", "")) for b in content if isinstance(b, str | dict)
    )


def extract_json(text: str) -> Any:
    """The first JSON object in `text`: a fenced ```json block, the whole text, or the first ``{...}``.

    Raises:
        ValueError: no JSON object found (the message says so).
    """
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        stripped = candidate.strip()
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            pass
        start = stripped.find("{")
        while start != -1:
            try:
                obj, _ = decoder.raw_decode(stripped, start)
                return obj
            except json.JSONDecodeError:
                start = stripped.find("{", start + 1)
    msg = "no JSON object in the answer" if text.strip() else "the answer is empty"
    raise ValueError(msg)


TRUNCATED = "the answer was truncated: it hit the max_tokens limit (finish_reason 'length')"


def is_truncated(message: BaseMessage) -> bool:
    """True when the server stopped `message` at the token limit (finish_reason "length")."""
    return (getattr(message, "response_metadata", None) or {}).get("finish_reason") == "length"


def _validate(message: AIMessage, schema: type[BaseModel]) -> BaseModel:
    if is_truncated(message):
        # a cut-off answer is never read, even when what came before the cut parses (issue 22)
        raise _AnswerInvalid(f"{TRUNCATED}; answer in fewer tokens")
    text = message_text(message)
    try:
        data = extract_json(text)
    except ValueError as exc:
        called = f" (it called tools: {', '.join(c['name'] for c in message.tool_calls)})" if message.tool_calls else ""
        raise _AnswerInvalid(f"{exc}{called}") from None
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()[:6]
        )
        raise _AnswerInvalid(problems) from None


def _unwrap(model: Runnable) -> Runnable:
    while isinstance(model, RunnableBinding):
        model = model.bound
    return model


def _is_openai(model: Runnable) -> bool:
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:  # pragma: no cover - langchain-openai is a dependency
        return False
    return isinstance(_unwrap(model), ChatOpenAI)


def _takes_logprobs(model: Runnable) -> bool:
    """True for chat models with a ``logprobs`` setting (ChatOpenAI, the transformers backend)."""
    return "logprobs" in getattr(type(_unwrap(model)), "model_fields", {})


def _schema_instruction(schema: type[BaseModel]) -> str:
    return (
        "Answer with one JSON object and nothing else (no prose, no code fence). It must validate "
        f"against this JSON schema:\n{json.dumps(schema.model_json_schema(), separators=(',', ':'))}"
    )


def _request(
    mode: str, schema: type[BaseModel], messages: list[BaseMessage], logprobs: bool
) -> tuple[list, dict]:
    """(messages, invoke kwargs) for one mode."""
    kwargs: dict[str, Any] = {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if logprobs else {}
    if mode == "json_schema":
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema(), "strict": True},
        }
        return messages, kwargs
    if mode == "json_mode":
        kwargs["response_format"] = {"type": "json_object"}
    return merge_system_messages([*messages, SystemMessage(content=_schema_instruction(schema))]), kwargs


def _steps(
    model: Runnable, messages: Sequence[BaseMessage], schema: type[BaseModel], max_repairs: int
) -> Generator[tuple[list, dict], AIMessage, StructuredResult]:
    """The structured-output protocol, independent of sync/async: yields (messages, kwargs) to
    invoke and receives the AI message; a rejected request is thrown back in. Returns the result."""
    modes = MODES if _is_openai(model) else ("text",)
    logprobs = _takes_logprobs(model)
    history = list(messages)
    for i, mode in enumerate(modes):
        request, kwargs = _request(mode, schema, history, logprobs)
        try:
            message = yield request, kwargs
        except ModelRequestRejectedError as exc:
            if i + 1 < len(modes) and is_structured_output_rejection(exc.status_code, exc.body):
                continue  # the server does not support this response_format: next mode
            raise  # any other rejection (too many images, bad parameter) surfaces at once
        repaired = False
        for attempt in range(max_repairs + 1):
            try:
                parsed = _validate(message, schema)
                return StructuredResult(parsed=parsed, message=message, repaired=repaired, mode=mode)
            except _AnswerInvalid as exc:
                problem = str(exc)
                if attempt == max_repairs:
                    head = message_text(message)[:200]
                    fix = ("raise max_tokens (ANOMALY_AGENT_MAX_TOKENS) or ask for a shorter explanation"
                           if is_truncated(message) else
                           "use a stronger model or a server with structured output (vLLM), or check the prompt")
                    msg = (
                        f"the model's answer does not validate against {schema.__name__} after "
                        f"{max_repairs} repair turn(s) ({mode} mode): {problem}. It began: {head!r}. Fix: {fix}"
                    )
                    raise ModelOutputError(msg) from None
            request = [
                *request,
                AIMessage(content=message_text(message) or "(no answer)"),
                HumanMessage(
                    content=(
                        f"Your answer is not valid: {problem}. Reply again with only the corrected "
                        f"JSON object for {schema.__name__}."
                    )
                ),
            ]
            message = yield request, kwargs
            repaired = True
    msg = "unreachable: every structured-output mode was rejected"  # pragma: no cover
    raise ModelOutputError(msg)  # pragma: no cover


def invoke_structured(
    model: BaseChatModel | Runnable,
    messages: Sequence[BaseMessage],
    schema: type[BaseModel],
    *,
    max_repairs: int = 1,
) -> StructuredResult:
    """Ask `model` for an answer that validates against `schema`.

    Args:
        model: any chat model (or a binding of one); OpenAI-compatible ones get server-side
            constraints, models with a ``logprobs`` setting are asked for logprobs.
        messages: the conversation so far.
        schema: the pydantic model the answer must validate against.
        max_repairs: repair turns after a failed validation (default 1).

    Raises:
        ModelOutputError: the answer still fails validation after the repairs; names what was wrong.
        ModelServerError: the server failed (subclasses name the cause).
    """
    steps = _steps(model, messages, schema, max_repairs)
    try:
        request, kwargs = next(steps)
        while True:
            try:
                message = model.invoke(request, **kwargs)
            except ModelRequestRejectedError as exc:
                request, kwargs = steps.throw(exc)
                continue
            request, kwargs = steps.send(message)
    except StopIteration as done:
        return done.value


async def ainvoke_structured(
    model: BaseChatModel | Runnable,
    messages: Sequence[BaseMessage],
    schema: type[BaseModel],
    *,
    max_repairs: int = 1,
) -> StructuredResult:
    """`invoke_structured` with ``ainvoke`` (no thread per call under a concurrent runner)."""
    steps = _steps(model, messages, schema, max_repairs)
    try:
        request, kwargs = next(steps)
        while True:
            try:
                message = await model.ainvoke(request, **kwargs)
            except ModelRequestRejectedError as exc:
                request, kwargs = steps.throw(exc)
                continue
            request, kwargs = steps.send(message)
    except StopIteration as done:
        return done.value
