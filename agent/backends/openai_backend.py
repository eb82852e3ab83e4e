"""The ``openai`` backend: `ChatOpenAI` against any OpenAI-compatible server (vLLM first).

`OpenAIChatModel` is a `ChatOpenAI` that, before each request, merges system messages into one and
downscales ``data:`` images to ``image_max_side``; it retries connection errors, 429 and 5xx with
exponential backoff (``Retry-After`` honoured up to ``request_timeout_s``), never retries a timeout (so a call never
takes much longer than ``request_timeout_s``), and maps every failure to a specific
`ModelServerError` naming the URL, the cause and the fix. `bind_tools` and
`with_structured_output` are ChatOpenAI's own.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import httpx
import openai
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from pydantic import Field

from agent.backends.errors import (
    ModelOutputError,
    ModelRateLimitedError,
    ModelRequestRejectedError,
    ModelResponseError,
    ModelServerFailureError,
    ModelTimeoutError,
    ModelUnreachableError,
    rejection_fix,
)
from agent.backends.messages import limit_image_sizes, merge_system_messages
from agent.config import AgentConfig
from agent.errors import ModelServerError

T = TypeVar("T")

_SERVE_HINT = "start the server (`anomaly-agent serve-model {model}`) or set --base-url / ANOMALY_AGENT_BASE_URL"


def _root_cause(exc: BaseException) -> str:
    """The innermost cause's text, shortened ("connection refused", "Name or service not known")."""
    inner: BaseException = exc
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
    text = (str(inner) or type(inner).__name__).splitlines()[0]
    if "refused" in text.lower() or isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    return text[:160]


def _error_text(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        body = body.get("error", body)
        if isinstance(body, dict):
            body = body.get("message", body)
    text = str(body if body is not None else exc.message)
    return text.replace("\n", " ")[:300]


_PARSING_FRAMES = frozenset(
    {"_create_chat_result", "_convert_dict_to_message", "_convert_chunk_to_generation_chunk", "_process_response"}
)


def _raised_while_parsing(exc: BaseException) -> bool:
    """True when `exc` (a TypeError, KeyError, ...) came from reading the server's answer, not from our request."""
    if not isinstance(exc, TypeError | KeyError | AttributeError | ValueError | IndexError):
        return False
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in _PARSING_FRAMES:
            return True
        tb = tb.tb_next
    return False


def map_error(exc: BaseException, base_url: str, model: str, timeout_s: float, attempts: int) -> ModelServerError | None:
    """A specific `ModelServerError` for an OpenAI-client failure, or None for an unknown error (a bug).

    Args:
        exc: what the client raised.
        base_url / model / timeout_s: named in the message.
        attempts: how many requests were made (shown for retried failures).
    """
    tried = f" after {attempts} attempt(s)" if attempts > 1 else ""
    if isinstance(exc, ModelServerError):
        return exc
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
        return ModelTimeoutError(
            f"{base_url} did not answer within {timeout_s:g}s (request timed out). Fix: raise "
            "ANOMALY_AGENT_REQUEST_TIMEOUT_S (the request_timeout_s config key) or check the server's load"
        )
    if isinstance(exc, openai.APIConnectionError | httpx.TransportError):
        return ModelUnreachableError(
            f"{base_url} unreachable ({_root_cause(exc)}){tried}. Fix: {_SERVE_HINT.format(model=model)}"
        )
    if isinstance(exc, openai.RateLimitError):
        return ModelRateLimitedError(
            f"{base_url} rate limited the request (HTTP 429){tried}: {_error_text(exc)}. Fix: lower the "
            "batch concurrency, or raise max_retries (ANOMALY_AGENT_MAX_RETRIES)"
        )
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        text = _error_text(exc)
        if code >= 500:
            return ModelServerFailureError(
                f"{base_url} failed with HTTP {code}{tried}: {text}. Fix: check the server's log "
                "(out of GPU memory, crashed worker) and restart it"
            )
        fixes = {
            401: "set --api-key / ANOMALY_AGENT_API_KEY to the server's key",
            403: "set --api-key / ANOMALY_AGENT_API_KEY to a key allowed to use this model",
            404: f"check --model ({model!r}) against the served ids (`anomaly-agent doctor`) and that base_url ends in /v1",
        }
        fix = fixes.get(code) or rejection_fix(text)
        return ModelRequestRejectedError(
            f"{base_url} rejected the request (HTTP {code}): {text.rstrip('.')}. Fix: {fix}", status_code=code, body=text
        )
    if isinstance(exc, openai.LengthFinishReasonError):
        # the openai client refuses to parse a structured answer cut at max_tokens: truncated, never read
        from agent.backends.structured import TRUNCATED

        return ModelOutputError(
            f"{base_url}: {TRUNCATED}, so it is not read as an answer. Fix: raise max_tokens "
            "(ANOMALY_AGENT_MAX_TOKENS) or ask for a shorter explanation"
        )
    if isinstance(exc, json.JSONDecodeError | openai.APIResponseValidationError) or _raised_while_parsing(exc):
        return ModelResponseError(
            f"{base_url} sent a response that is not a valid chat completion ({type(exc).__name__}: "
            f"{str(exc)[:160]}). Fix: check that base_url points at an OpenAI-compatible server (vLLM) "
            "and that no proxy rewrites its answers"
        )
    return None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APITimeoutError):
        return False  # a slow server stays slow; retrying would multiply the wait
    if isinstance(exc, openai.APIConnectionError):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return False


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) * scale
            except ValueError:
                return None
    return None


def tool_calls_from_text(message: AIMessage) -> AIMessage:
    """`message` with Hermes ``<tool_call>`` text in its content turned into tool calls.

    vLLM returns tool calls as text when its hermes parser fails (the whole output becomes the content,
    ``Hermes2ProToolParser.extract_tool_calls`` in vllm/entrypoints/openai/tool_parsers/hermes_tool_parser.py)
    or when the server runs without a tool-call parser. The text is parsed with our own
    `HermesToolCallParser`: valid calls run, malformed ones become ``invalid_tool_calls`` that the tools
    node answers with an error, so the model learns its call failed. A message that already has tool
    calls, or no ``<tool_call>`` text, is returned unchanged.
    """
    from agent.backends.structured import message_text
    from agent.backends.toolcall_parsers import HermesToolCallParser

    if message.tool_calls or message.invalid_tool_calls:
        return message
    text = message_text(message)
    if "<tool_call>" not in text:
        return message
    parsed = HermesToolCallParser().parse(text)
    return message.model_copy(update={
        "content": parsed.content,
        "tool_calls": parsed.tool_calls,
        "invalid_tool_calls": [_sendable_invalid(call) for call in parsed.invalid_tool_calls],
    })


def _sendable_invalid(call: dict) -> dict:
    """An invalid tool call that the server accepts back in the history: a name and JSON-object
    arguments (vLLM ``json.loads`` the arguments of every assistant tool call for the chat template,
    ``_postprocess_messages`` in vllm/entrypoints/chat_utils.py; raw text there is an HTTP 400)."""
    args = call.get("args")
    try:
        ok = isinstance(json.loads(args), dict) if isinstance(args, str) else False
    except json.JSONDecodeError:
        ok = False
    return {**call, "name": call.get("name") or "unparsed_tool_call",
            "args": args if ok else json.dumps({"unparsed": str(args or "")[:2000]})}


def _sendable_history(messages: list[BaseMessage]) -> list[BaseMessage]:
    """`messages` with every AI message's invalid tool calls made sendable (`_sendable_invalid`)."""
    out = []
    for m in messages:
        if isinstance(m, AIMessage) and m.invalid_tool_calls:
            m = m.model_copy(update={"invalid_tool_calls": [_sendable_invalid(c) for c in m.invalid_tool_calls]})
        out.append(m)
    return out


class OpenAIChatModel(ChatOpenAI):
    """`ChatOpenAI` with one system message, bounded image sizes, bounded retries and clear errors.

    Attributes:
        image_max_side: ``data:`` images larger than this (pixels, longer side) are downscaled.
        retries: extra attempts after a connection error, 429 or 5xx (the OpenAI client's own
            ``max_retries`` is 0 so that only this policy applies).
        backoff_s: first backoff; doubles per attempt, +-25% jitter, capped at ``max_backoff_s`` (a
            server's ``Retry-After`` is honoured up to the request timeout instead).
    """

    image_max_side: int | None = 1024
    retries: int = Field(2, ge=0)
    backoff_s: float = Field(0.5, ge=0.0)
    max_backoff_s: float = Field(8.0, ge=0.0)
    endpoint_label: str | None = None  # named in errors instead of the base URL (several replicas)

    @property
    def _llm_type(self) -> str:
        return "openai-compatible"

    def _prepare(self, messages: list[BaseMessage]) -> list[BaseMessage]:
        messages = _sendable_history(merge_system_messages(messages))
        if self.image_max_side:
            messages = limit_image_sizes(messages, self.image_max_side)
        return messages

    def _delay(self, attempt: int, exc: BaseException) -> float:
        """Seconds to wait before the next attempt: the server's Retry-After, honoured up to
        ``request_timeout_s`` (a gateway or rate-limited service in front of the model sends it with
        429/503), else exponential backoff with jitter, capped at ``max_backoff_s``."""
        wait = _retry_after(exc)
        if wait is not None:
            timeout = self.request_timeout if isinstance(self.request_timeout, int | float) else self.max_backoff_s
            return max(0.0, min(wait, float(timeout)))
        wait = self.backoff_s * (2**attempt) * random.uniform(0.75, 1.25)
        return max(0.0, min(wait, self.max_backoff_s))

    def _fail(self, exc: BaseException, attempts: int) -> ModelServerError | None:
        timeout = self.request_timeout if isinstance(self.request_timeout, int | float) else float("nan")
        return map_error(exc, self.endpoint_label or str(self.openai_api_base), self.model_name, timeout, attempts)

    def _call(self, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if _retryable(exc) and attempt < self.retries:
                    time.sleep(self._delay(attempt, exc))
                    attempt += 1
                    continue
                mapped = self._fail(exc, attempt + 1)
                if mapped is None or mapped is exc:
                    raise
                raise mapped from exc

    async def _acall(self, fn: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return await fn()
            except Exception as exc:
                if _retryable(exc) and attempt < self.retries:
                    await asyncio.sleep(self._delay(attempt, exc))
                    attempt += 1
                    continue
                mapped = self._fail(exc, attempt + 1)
                if mapped is None or mapped is exc:
                    raise
                raise mapped from exc

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prepared = self._prepare(messages)
        parent = super()._generate
        return self._call(lambda: parent(prepared, stop=stop, run_manager=run_manager, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prepared = self._prepare(messages)
        parent = super()._agenerate
        return await self._acall(lambda: parent(prepared, stop=stop, run_manager=run_manager, **kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        prepared = self._prepare(messages)
        attempt = 0
        while True:
            started = False
            try:
                for chunk in super()._stream(prepared, stop=stop, run_manager=run_manager, **kwargs):
                    started = True
                    yield chunk
                return
            except Exception as exc:
                if not started and _retryable(exc) and attempt < self.retries:
                    time.sleep(self._delay(attempt, exc))
                    attempt += 1
                    continue
                mapped = self._fail(exc, attempt + 1)
                if mapped is None or mapped is exc:
                    raise
                raise mapped from exc

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        prepared = self._prepare(messages)
        attempt = 0
        while True:
            started = False
            try:
                async for chunk in super()._astream(prepared, stop=stop, run_manager=run_manager, **kwargs):
                    started = True
                    yield chunk
                return
            except Exception as exc:
                if not started and _retryable(exc) and attempt < self.retries:
                    await asyncio.sleep(self._delay(attempt, exc))
                    attempt += 1
                    continue
                mapped = self._fail(exc, attempt + 1)
                if mapped is None or mapped is exc:
                    raise
                raise mapped from exc


def build_openai_model(config: AgentConfig, *, logprobs: bool = False, top_logprobs: int = 5) -> OpenAIChatModel:
    """The chat model for ``config.base_url`` / ``config.model``.

    Args:
        config: reads base_url (one URL, or several replicas of the model), api_key, model,
            request_timeout_s, max_retries, image_max_side.
        logprobs: ask for token log-probabilities on every call (`invoke_structured` asks for them
            on the verdict call anyway).
        top_logprobs: alternatives per token when `logprobs` is on.

    Raises:
        UserInputError: no base_url configured.
    """
    from agent.errors import UserInputError

    if not config.base_url:
        msg = (
            "backend 'openai' needs an endpoint. Fix: set --base-url / ANOMALY_AGENT_BASE_URL "
            "(e.g. http://localhost:8000/v1 after `anomaly-agent serve-model`)"
        )
        raise UserInputError(msg)
    extra: dict[str, Any] = {"logprobs": True, "top_logprobs": top_logprobs} if logprobs else {}
    # an async client of this model's own: langchain-openai's default one is cached per (base_url,
    # timeout) for the whole process and stays bound to the first event loop, so a second
    # `asyncio.run` (a second eval in one process) would fail with "Event loop is closed"
    extra["http_async_client"] = httpx.AsyncClient(timeout=config.request_timeout_s)
    urls = config.base_urls
    if len(urls) > 1:  # several replicas: requests spread by fewest outstanding (`agent.backends.replicas`)
        from agent.backends.replicas import replica_clients

        _, extra["http_client"], extra["http_async_client"] = replica_clients(urls, config.request_timeout_s)
        extra["endpoint_label"] = f"every replica ({', '.join(urls)})"
    # Sampling (issue 22), checked against vLLM's ChatCompletionRequest (vllm/entrypoints/openai/protocol.py,
    # vllm-project/vllm): a request without temperature gets the model's generation_config default, else
    # _DEFAULT_SAMPLING_PARAMS temperature 1.0; without max_tokens / max_completion_tokens (langchain-openai
    # sends the latter, vLLM reads `max_completion_tokens or max_tokens`) it may generate up to
    # max_model_len - prompt tokens (`default_max_tokens` in serving_chat.py), so a looping answer runs
    # until request_timeout_s. `seed` is a ChatCompletionRequest field passed to SamplingParams.
    extra["temperature"] = config.temperature
    extra["max_tokens"] = config.max_tokens
    if config.seed is not None:
        extra["seed"] = config.seed
    return OpenAIChatModel(
        base_url=urls[0],
        api_key=config.api_key,
        model=config.model,
        timeout=config.request_timeout_s,
        max_retries=0,
        retries=config.max_retries,
        image_max_side=config.image_max_side,
        use_responses_api=False,
        stream_usage=True,  # a streamed chat answer (serve's OpenAI endpoint) still reports its tokens
        **extra,
    )
