"""A fake OpenAI-compatible chat server (aiohttp) for tests, benchmarks and offline demos.

It serves ``GET /v1/models`` and ``POST /v1/chat/completions`` on 127.0.0.1, replays scripted
replies (content, tool calls, logprobs; JSON or server-sent events when ``stream`` is set), records what each client sent (the JSON body and the
decoded ``data:`` images) and injects faults: HTTP errors (500, 429 with ``Retry-After``), slow
replies (``asyncio.sleep``, so concurrent requests overlap), malformed JSON, invalid tool-call
arguments, unknown tool names, tool calls written as Hermes text in the content (a server without a
tool-call parser, or one whose parser failed: `Reply.tools_as_text`), answers cut at the request's
``max_completion_tokens`` / ``max_tokens`` (finish_reason "length"), and rejection of ``response_format``
json_schema with a 400.
Connection refused is `closed_port_url()`.

Like a vLLM server started by ``anomaly-agent serve-model``, it refuses requests that vLLM refuses,
before any script step is used, with vLLM's status codes and error body
``{"error": {"message", "type", "param", "code"}}`` (vLLM's ``ErrorResponse``/``ErrorInfo``; older
vLLM releases sent the same fields flat, with ``"object": "error"``):

- an unknown ``model``: 404 ``NotFoundError`` "The model `X` does not exist." (vLLM
  ``OpenAIServing._check_model`` in vllm/entrypoints/openai/serving_engine.py, vllm-project/vllm);
- ``tool_choice`` "auto" (also the default when ``tools`` are sent without a ``tool_choice``, vLLM
  ``ChatCompletionRequest.check_tool_usage``) on a server without ``--enable-auto-tool-choice``: 400
  '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
  (vLLM ``OpenAIServingChat.create_chat_completion``, vllm/entrypoints/openai/serving_chat.py; the
  tool-calling docs, https://docs.vllm.ai/en/latest/features/tool_calling.html);
- more images in one request than ``--limit-mm-per-prompt`` allows (counted over all messages): 400
  "At most N image(s) may be provided in one prompt." (vLLM ``MultiModalItemTracker`` in
  vllm/entrypoints/chat_utils.py; older releases said "in one request", vllm-project/vllm issues
  #9739 and #17092; the limit is per request, https://docs.vllm.ai/en/latest/configuration/engine_args/);
- an image block in a message whose role is not "user": 400. vLLM's own handling depends on the
  version and chat template (issue #43203: images in "tool" messages rejected; PR #34072: a warning
  for "system" messages), and OpenAI refuses them ("Image URLs are only allowed for messages with
  role 'user'"), so the fake server is strict and answers with OpenAI's wording;
- an image that cannot be decoded: 400 (vLLM's media loader fails in "Error in preprocessing prompt
  inputs", vllm/entrypoints/openai/serving_chat.py, issue #28123; `reject_undecodable_images`);
- an assistant message whose tool-call ``arguments`` are not JSON: 400 (vLLM ``json.loads`` them for the
  chat template, ``_postprocess_messages`` in vllm/entrypoints/chat_utils.py);
- ``top_logprobs`` (with ``logprobs``) over ``--max-logprobs`` (vLLM default 20): 400 "Requested sample
  logprobs of N, which is greater than max allowed: M" (vLLM's V1 input processor, ``_validate_logprobs``;
  newer releases append " (parameter=logprobs, value=N)").

Every request the agent sends in the test suite goes through these checks.

Usage::

    with FakeOpenAIServer(script=[{"content": "hi"}], latency_s=0.0) as srv:
        ChatOpenAI(base_url=srv.base_url, api_key="x", model=srv.models[0]).invoke("hello")
        srv.requests[0].images  # decoded HxWx3 uint8 arrays

Run one by hand: ``python -m evals.fakeserver --port 8000 --content '{"label": "normal"}'``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import json
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web
from PIL import Image

_TOKEN = re.compile(r'"|\s+|\w+|[^\w\s"]')


@dataclass
class Reply:
    """One scripted answer of the fake server.

    Attributes:
        content: assistant text (None when the reply is only tool calls).
        tool_calls: ``{"name", "arguments", "id"?}``; `arguments` is a dict (JSON-encoded) or a raw
            string (send invalid JSON to test invalid tool calls).
        logprobs: explicit OpenAI ``logprobs.content`` entries; used when the request asks for them.
        label_probs: e.g. ``{"anomalous": 0.8, "normal": 0.2}``: generate logprobs whose
            top alternatives at the label token carry these probabilities.
        delay_s: extra seconds before answering (added to the server's ``latency_s``).
        status: HTTP status; not 200 answers an OpenAI-shaped error body.
        retry_after_s: sent as ``Retry-After`` (seconds) with an error status.
        malformed: answer 200 with a truncated JSON body.
        raw_body: answer 200 with exactly this text (JSON content type when it starts with "{",
            else ``text/html``, e.g. a proxy's login page).
        usage: overrides the reported token usage.
        omit_logprobs: answer ``"logprobs": null`` even when asked (a server or model without them).
        tools_as_text: write `tool_calls` into the content as Hermes ``<tool_call>{...}</tool_call>``
            text and send no ``tool_calls`` (a server without a tool-call parser; with a raw-string
            `arguments` that is not JSON, the text is what vLLM's hermes parser returns when it fails).
    """

    content: str | None = None
    tool_calls: list[dict] = field(default_factory=list)
    logprobs: list[dict] | None = None
    label_probs: dict[str, float] | None = None
    delay_s: float = 0.0
    status: int = 200
    retry_after_s: float | None = None
    malformed: bool = False
    raw_body: str | None = None
    usage: dict | None = None
    omit_logprobs: bool = False
    tools_as_text: bool = False

    @classmethod
    def of(cls, item: Reply | dict | str) -> Reply:
        if isinstance(item, Reply):
            return item
        if isinstance(item, str):
            return cls(content=item)
        return cls(**item)


@dataclass
class RecordedRequest:
    """What a client sent to ``/v1/chat/completions``.

    Attributes:
        body: the parsed JSON body.
        images: one entry per ``image_url`` block, in order: an HxWx3 uint8 array, or the error
            text when the data URL could not be decoded (None when decoding is off).
        image_formats: "PNG"/"JPEG"/... per image (None when undecodable or decoding is off).
        handled_ms: server-side time to parse, decode and answer, excluding the scripted delay.
        rejected: the error message when the server refused the request (a vLLM check), else None.
    """

    body: dict
    images: list[np.ndarray | str | None] = field(default_factory=list)
    image_formats: list[str | None] = field(default_factory=list)
    handled_ms: float = 0.0
    rejected: str | None = None

    @property
    def messages(self) -> list[dict]:
        return list(self.body.get("messages") or [])

    @property
    def roles(self) -> list[str]:
        return [m.get("role", "") for m in self.messages]

    @property
    def system_count(self) -> int:
        return self.roles.count("system")

    @property
    def tools(self) -> list[dict]:
        return list(self.body.get("tools") or [])

    @property
    def tool_names(self) -> list[str]:
        return [t.get("function", {}).get("name", "") for t in self.tools]


def _image_urls(body: dict) -> list[str]:
    urls = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") == "image_url":
                    image_url = block.get("image_url")
                    urls.append(image_url.get("url", "") if isinstance(image_url, dict) else str(image_url))
    return urls


def decode_data_url(url: str) -> tuple[np.ndarray, str]:
    """Decode a ``data:image/...;base64,...`` URL into (HxWx3 uint8 RGB, format). Raises ValueError."""
    if not url.startswith("data:") or ";base64," not in url:
        msg = f"not a base64 data URL: {url[:40]!r}"
        raise ValueError(msg)
    raw = base64.b64decode(url.split(",", 1)[1], validate=True)
    with Image.open(io.BytesIO(raw)) as img:
        img.load()
        return np.asarray(img.convert("RGB")), str(img.format)


def _decode_all(urls: list[str]) -> tuple[list, list]:
    images, formats = [], []
    for url in urls:
        try:
            pixels, fmt = decode_data_url(url)
            images.append(pixels)
            formats.append(fmt)
        except Exception as exc:  # noqa: BLE001 - recorded for the test to assert on
            images.append(f"{type(exc).__name__}: {exc}")
            formats.append(None)
    return images, formats


def _tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _make_logprobs(reply: Reply, top_n: int) -> list[dict]:
    """OpenAI ``logprobs.content`` for the reply's text: probability 1 everywhere except the label token."""
    if reply.logprobs is not None:
        return reply.logprobs
    labels = {k.lower(): v for k, v in (reply.label_probs or {}).items()}
    entries = []
    for tok in _tokenize(reply.content or ""):
        if tok.lower() in labels:
            alts = sorted(labels.items(), key=lambda kv: -kv[1])
            top = [{"token": k, "logprob": math.log(max(p, 1e-12))} for k, p in alts][: max(top_n, 1)]
            entries.append({"token": tok, "logprob": math.log(max(labels[tok.lower()], 1e-12)), "top_logprobs": top})
            labels = {}  # only the first label token carries the alternatives
        else:
            entries.append({"token": tok, "logprob": 0.0, "top_logprobs": [{"token": tok, "logprob": 0.0}][:top_n]})
    return entries


def hermes_text(calls: list[dict], before: str = "") -> str:
    """`calls` (``{"name", "arguments"}``) as Qwen/Hermes tool-call text, after `before`. A raw-string
    ``arguments`` is written as is (invalid JSON stays invalid: vLLM's hermes parser then fails and
    returns the whole text as content, `Hermes2ProToolParser.extract_tool_calls` in
    vllm/entrypoints/openai/tool_parsers/hermes_tool_parser.py)."""
    blocks = []
    for call in calls:
        args = call.get("arguments", {})
        args_text = args if isinstance(args, str) else json.dumps(args)
        blocks.append(f'<tool_call>\n{{"name": {json.dumps(call["name"])}, "arguments": {args_text}}}\n</tool_call>')
    return "\n".join(p for p in (before, *blocks) if p)


def _last_user_text(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(str(b.get("text", "")) for b in content or [] if isinstance(b, dict))
    return ""


def inspection_responder(body: dict) -> Reply:
    """A reply for whatever the agent or the direct baseline asks, so a whole eval runs against the
    fake server: the verdict JSON (label "normal", P(normal) 0.7) when JSON is asked for (a
    ``response_format``, or a prompt that asks for JSON), "No" (P(no) 0.7) to a yes/no question,
    and a short note that calls no tool to an agent turn with tools."""
    text = _last_user_text(body).lower()
    wants_json = bool(body.get("response_format")) or "json" in text
    if wants_json:
        verdict = {"label": "normal", "defect_type": None, "regions": [],
                   "explanation": "fake server: the evidence shows nothing the references lack."}
        return Reply(content=json.dumps(verdict), label_probs={"normal": 0.7, "anomalous": 0.2, "uncertain": 0.1})
    if "yes or no" in text:
        return Reply(content="No", label_probs={"no": 0.7, "yes": 0.3})
    return Reply(content="fake server: no tool needed; the survey evidence is enough.")


def closed_port_url() -> str:
    """A ``http://127.0.0.1:<port>/v1`` URL where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class FakeOpenAIServer:
    """An OpenAI-compatible server in a background thread; a context manager.

    Args:
        script: replies served in order (`Reply`, dict of its fields, or a string = content).
        latency_s: seconds every chat request waits (``asyncio.sleep``: requests overlap).
        models: ids listed by ``/v1/models``.
        default: the reply once the script is used up; None answers 400 "script exhausted".
        reject_json_schema: answer 400 to requests with ``response_format`` of type json_schema
            (like servers without guided decoding), without consuming a script step.
        decode_images: decode the data-URL images of each request (off for pure-overhead benchmarks).
        port: 0 picks a free port.
        max_images: vLLM's ``--limit-mm-per-prompt`` image limit per request (None: no limit);
            `anomaly-agent serve-model` passes ``max_images_per_request`` (default 4).
        max_logprobs: vLLM's ``--max-logprobs`` (default 20, as serve-model passes).
        enable_auto_tool_choice: vLLM's ``--enable-auto-tool-choice`` (serve-model passes it).
        check_model: refuse a ``model`` that is not in `models` with vLLM's 404.
        stream_piece_s: with ``stream``, seconds between the content's pieces (a word each), as a model
            writing its answer.
        responder: called with the request body when the script is used up (before `default`);
            returns the reply. `inspection_responder` answers the agent and the direct baseline.
        reject_undecodable_images: answer 400 to a request with an image that cannot be decoded, as
            vLLM does (needs `decode_images`); off: record the decoding error and answer.

    Attributes:
        requests: every chat request received, in arrival order.
        base_url: ``http://127.0.0.1:<port>/v1`` once started.
    """

    def __init__(
        self,
        script: Iterable[Reply | dict | str] = (),
        *,
        latency_s: float = 0.0,
        models: Iterable[str] = ("fake-vlm",),
        default: Reply | dict | str | None = None,
        reject_json_schema: bool = False,
        decode_images: bool = True,
        port: int = 0,
        max_images: int | None = 4,
        max_logprobs: int = 20,
        enable_auto_tool_choice: bool = True,
        check_model: bool = True,
        responder: Callable[[dict], Reply | dict | str] | None = None,
        reject_undecodable_images: bool = True,
        stream_piece_s: float = 0.0,
    ) -> None:
        self._script: deque[Reply] = deque(Reply.of(r) for r in script)
        self.latency_s = latency_s
        self.models = list(models)
        self.default = Reply.of(default) if default is not None else None
        self.reject_json_schema = reject_json_schema
        self.decode_images = decode_images
        self.max_images = max_images
        self.max_logprobs = max_logprobs
        self.enable_auto_tool_choice = enable_auto_tool_choice
        self.check_model = check_model
        self.responder = responder
        self.reject_undecodable_images = reject_undecodable_images
        self.stream_piece_s = stream_piece_s
        self.requests: list[RecordedRequest] = []
        self.served = 0
        self._port = port
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self.port: int | None = None

    # -- script -----------------------------------------------------------------------------
    def push(self, *replies: Reply | dict | str) -> None:
        """Append replies to the script (thread-safe enough for tests: deque appends are atomic)."""
        self._script.extend(Reply.of(r) for r in replies)

    @property
    def remaining(self) -> int:
        return len(self._script)

    @property
    def base_url(self) -> str:
        if self.port is None:
            msg = "FakeOpenAIServer is not running; use it as a context manager or call start()"
            raise RuntimeError(msg)
        return f"http://127.0.0.1:{self.port}/v1"

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self._serve, name="fake-openai-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0) or self._start_error is not None:
            msg = f"fake server failed to start: {self._start_error!r}"
            raise RuntimeError(msg)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
        self._loop = None
        self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        try:
            loop.run_until_complete(runner.setup())
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self._port))
            self.port = sock.getsockname()[1]
            loop.run_until_complete(web.SockSite(runner, sock, backlog=256).start())
            self._loop = loop
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    # -- handlers ---------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fakeserver"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    @staticmethod
    def _error(status: int, message: str, headers: dict | None = None, param: str | None = None) -> web.Response:
        """vLLM's error body: ``{"error": {"message", "type", "param", "code"}}``."""
        kind = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}.get(status, "InternalServerError")
        body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
        return web.json_response(body, status=status, headers=headers)

    def vllm_check(self, body: dict) -> tuple[int, str, str | None] | None:
        """(status, message, param) of the first vLLM check `body` fails, in vLLM's order, or None."""
        model = body.get("model")
        if self.check_model and model not in self.models:
            return 404, f"The model `{model}` does not exist.", None
        tool_choice = body.get("tool_choice", "auto" if body.get("tools") else "none")
        if tool_choice == "auto" and not self.enable_auto_tool_choice:
            return 400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set', None
        n_images = 0
        for i, message in enumerate(body.get("messages") or []):
            content = message.get("content")
            blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
            images = sum(1 for b in blocks if b.get("type") == "image_url")
            role = message.get("role")
            if images and role != "user":
                return 400, (f"Invalid 'messages[{i}]'. Image URLs are only allowed for messages with role 'user', "
                             f"but this message with role '{role}' contains an image URL."), "messages"
            n_images += images
            if self.max_images is not None and n_images > self.max_images:
                return 400, f"At most {self.max_images} image(s) may be provided in one prompt.", None
        for i, message in enumerate(body.get("messages") or []):
            if message.get("role") != "assistant":
                continue
            for call in message.get("tool_calls") or []:
                args = (call.get("function") or {}).get("arguments")
                if isinstance(args, str) and args:
                    try:
                        json.loads(args)
                    except json.JSONDecodeError as exc:
                        return 400, f"messages[{i}]: tool call arguments are not JSON: {exc}", "messages"
        top = body.get("top_logprobs")
        if body.get("logprobs") and top is not None and int(top) > self.max_logprobs:
            return 400, f"Requested sample logprobs of {int(top)}, which is greater than max allowed: {self.max_logprobs}", "logprobs"
        return None

    async def _chat(self, request: web.Request) -> web.Response:
        start = time.perf_counter()
        raw = await request.read()
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            return self._error(400, f"request body is not JSON: {exc}")
        record = RecordedRequest(body=body)
        self.requests.append(record)
        urls = _image_urls(body)
        if urls and self.decode_images:
            loop = asyncio.get_running_loop()
            record.images, record.image_formats = await loop.run_in_executor(None, _decode_all, urls)
        elif urls:
            record.images, record.image_formats = [None] * len(urls), [None] * len(urls)

        problem = self.vllm_check(body)
        if problem is None and self.reject_undecodable_images and self.decode_images:
            bad = next((img for img in record.images if isinstance(img, str)), None)
            if bad is not None:
                # vLLM answers 400 when an image cannot be loaded: the media loader's error surfaces as
                # "Error in preprocessing prompt inputs" (OpenAIServingChat.create_chat_completion,
                # vllm/entrypoints/openai/serving_chat.py; vllm-project/vllm issue #28123)
                problem = 400, f"Failed to load image: {bad}", None
        if problem is not None:
            status, message, param = problem
            record.rejected = message
            record.handled_ms = (time.perf_counter() - start) * 1000
            return self._error(status, message, param=param)
        response_format = body.get("response_format") or {}
        if self.reject_json_schema and response_format.get("type") == "json_schema":
            record.handled_ms = (time.perf_counter() - start) * 1000
            return self._error(400, "response_format of type json_schema is not supported by this server")
        if self._script:
            reply = self._script.popleft()
        elif self.responder is not None:
            reply = Reply.of(self.responder(body))
        elif self.default is not None:
            reply = self.default
        else:
            record.handled_ms = (time.perf_counter() - start) * 1000
            return self._error(400, f"fake server script exhausted after {self.served} replies")
        self.served += 1
        record.handled_ms = (time.perf_counter() - start) * 1000
        delay = self.latency_s + reply.delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        if reply.status != 200:
            headers = {"Retry-After": f"{reply.retry_after_s:g}"} if reply.retry_after_s is not None else None
            return self._error(reply.status, f"injected HTTP {reply.status}", headers)
        if reply.raw_body is not None:
            kind = "application/json" if reply.raw_body.lstrip().startswith("{") else "text/html"
            return web.Response(text=reply.raw_body, content_type=kind)
        if reply.malformed:
            return web.Response(
                text='{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"index": 0, "mess',
                content_type="application/json",
            )
        completion = self._completion(body, reply, len(urls))
        if body.get("stream"):
            return await self._stream(request, body, completion)
        return web.json_response(completion)

    async def _stream(self, request: web.Request, body: dict, completion: dict) -> web.StreamResponse:
        """Send `completion` as server-sent events, the way OpenAI streams chat completions: the role and the
        first word of the content (with the logprobs and the tool calls), each further word in its own chunk
        (`stream_piece_s` apart), the finish reason, and the usage when ``stream_options.include_usage``."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        choice = completion["choices"][0]
        message = choice["message"]
        head = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
        words = re.findall(r"\S*\s*", message.get("content") or "")[:-1] or [""]
        delta: dict[str, Any] = {"role": "assistant", "content": words[0]}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        chunks = [{**head, "choices": [{"index": 0, "delta": delta, "logprobs": choice["logprobs"], "finish_reason": None}]}]
        chunks += [{**head, "choices": [{"index": 0, "delta": {"content": w}, "logprobs": None, "finish_reason": None}]}
                   for w in words[1:]]
        chunks.append({**head, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                            "finish_reason": choice["finish_reason"]}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**head, "choices": [], "usage": completion["usage"]})
        for i, chunk in enumerate(chunks):
            if i and self.stream_piece_s and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                await asyncio.sleep(self.stream_piece_s)
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _completion(self, body: dict, reply: Reply, n_images: int) -> dict:
        n = next(self._ids)
        tool_calls = [
            {
                "id": call.get("id") or f"call_{n}_{i}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": call["arguments"] if isinstance(call.get("arguments"), str) else json.dumps(call.get("arguments", {})),
                },
            }
            for i, call in enumerate(reply.tool_calls)
        ]
        content = reply.content
        if reply.tools_as_text and reply.tool_calls:
            content, tool_calls = hermes_text(reply.tool_calls, reply.content or ""), []
        finish = "tool_calls" if tool_calls else "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        tokens = _tokenize(content or "")
        if limit and len(tokens) > int(limit):  # cut at max_tokens like any server: finish_reason "length"
            content, tool_calls, finish = "".join(tokens[: int(limit)]), [], "length"
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            message["tool_calls"] = tool_calls
        logprobs = None
        if body.get("logprobs") and not reply.omit_logprobs:
            shown = Reply(content=content, logprobs=reply.logprobs, label_probs=reply.label_probs)
            logprobs = {"content": _make_logprobs(shown, int(body.get("top_logprobs") or 0)), "refusal": None}
        text_chars = sum(
            len(m["content"]) if isinstance(m.get("content"), str)
            else sum(len(b.get("text", "")) for b in m.get("content") or [] if isinstance(b, dict))
            for m in body.get("messages") or []
        )
        prompt_tokens = text_chars // 4 + 256 * n_images
        completion_tokens = len(_tokenize(content or "")) + 16 * len(tool_calls)
        usage = reply.usage or {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.models[0] if self.models else "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
        }


def main(argv: list[str] | None = None) -> None:
    """Serve a fixed reply until interrupted (for trying `doctor` or the CLI without a GPU)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="fake-vlm")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per chat request")
    parser.add_argument("--max-images", type=int, default=4, help="images per request, like vLLM's --limit-mm-per-prompt")
    parser.add_argument("--max-logprobs", type=int, default=20, help="like vLLM's --max-logprobs")
    parser.add_argument("--inspect", action="store_true",
                        help="answer the agent and the direct baseline by request (inspection_responder), "
                        "so `eval` and `python -m evals.gpu_check --base-url` run against it")
    parser.add_argument(
        "--content",
        default='{"label": "normal", "confidence": 0.5, "defect_type": null, "explanation": "fake server reply"}',
        help="the reply text for every request",
    )
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(models=[args.model], default={"content": args.content}, latency_s=args.latency,
                              port=args.port, max_images=args.max_images, max_logprobs=args.max_logprobs,
                              responder=inspection_responder if args.inspect else None)
    with server:
        print(f"fake OpenAI server at {server.base_url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
