"""The openai backend against a real local HTTP server (evals.fakeserver) on 127.0.0.1."""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from agent.backends import build_backend
from agent.backends.endpoint import check_endpoint
from agent.backends.errors import (
    ModelOutputError,
    ModelRateLimitedError,
    ModelRequestRejectedError,
    ModelResponseError,
    ModelServerFailureError,
    ModelTimeoutError,
    ModelUnreachableError,
)
from agent.backends.logprobs import label_probability
from agent.backends.messages import human_message
from agent.backends.openai_backend import OpenAIChatModel, build_openai_model
from agent.backends.structured import invoke_structured
from agent.config import load_config
from agent.errors import ModelServerError
from evals.fakeserver import FakeOpenAIServer, closed_port_url


class Answer(BaseModel):
    label: Literal["normal", "anomalous"]
    confidence: float = Field(ge=0.0, le=1.0)
    explanation: str


GOOD = '{"label": "anomalous", "confidence": 0.9, "explanation": "patch_knn found a scratch"}'


def zoom(image_id: str, x0: int, y0: int, x1: int, y1: int) -> str:
    """Crop and upsample a region of an image."""
    return image_id


@pytest.fixture
def server():
    with FakeOpenAIServer(models=["fake-vlm"]) as srv:
        yield srv


def _model(base_url: str, **overrides) -> OpenAIChatModel:
    settings = {"base_url": base_url, "model": "fake-vlm", "request_timeout_s": 5.0, "max_retries": 2}
    settings.update(overrides)
    model = build_openai_model(load_config(**settings))
    return model.model_copy(update={"backoff_s": 0.01, "max_backoff_s": 0.05})


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)


def test_request_has_one_system_message_and_decodable_downscaled_images(server):
    server.push({"content": "fine"})
    model = _model(server.base_url, image_max_side=128)
    big = human_message("look", [_image(300, 400)])  # larger than image_max_side: downscaled
    small = human_message("reference", [_image(64, 48, 1)], fmt="JPEG")  # small: sent as is
    reply = model.invoke([SystemMessage("rules"), SystemMessage("category: bottle"), big, small])
    assert reply.content == "fine"
    (req,) = server.requests
    assert req.system_count == 1
    assert req.roles[0] == "system"
    assert "rules" in req.messages[0]["content"] and "category: bottle" in req.messages[0]["content"]
    assert all(isinstance(img, np.ndarray) for img in req.images), req.images
    assert [img.shape for img in req.images] == [(96, 128, 3), (64, 48, 3)]
    assert req.image_formats == ["PNG", "JPEG"]
    assert reply.usage_metadata["input_tokens"] >= 512  # two images counted by the server


def test_bind_tools_sends_schema_and_parses_tool_calls(server):
    server.push({"tool_calls": [{"name": "zoom", "arguments": {"image_id": "query", "x0": 1, "y0": 2, "x1": 30, "y1": 40}}]})
    model = _model(server.base_url).bind_tools([zoom])
    reply = model.invoke([HumanMessage("inspect")])
    (req,) = server.requests
    assert req.tool_names == ["zoom"]
    params = req.tools[0]["function"]["parameters"]
    assert set(params["required"]) == {"image_id", "x0", "y0", "x1", "y1"}
    assert reply.tool_calls[0]["name"] == "zoom"
    assert reply.tool_calls[0]["args"] == {"image_id": "query", "x0": 1, "y0": 2, "x1": 30, "y1": 40}
    assert reply.tool_calls[0]["id"]


def test_invalid_tool_arguments_surface_as_invalid_tool_calls(server):
    server.push({"tool_calls": [{"name": "zoom", "arguments": '{"image_id": "query", "x0": 1,'}]})
    reply = _model(server.base_url).bind_tools([zoom]).invoke([HumanMessage("inspect")])
    assert reply.tool_calls == []
    (bad,) = reply.invalid_tool_calls
    assert bad["name"] == "zoom"
    assert "not valid JSON" in bad["error"]


def test_unknown_tool_name_is_passed_through_for_the_agent(server):
    server.push({"tool_calls": [{"name": "teleport", "arguments": {"where": "mars"}}]})
    reply = _model(server.base_url).bind_tools([zoom]).invoke([HumanMessage("inspect")])
    assert reply.tool_calls[0]["name"] == "teleport"  # the agent answers with a tool error


def test_connection_refused_names_url_and_fix():
    url = closed_port_url()
    start = time.perf_counter()
    with pytest.raises(ModelUnreachableError) as info:
        _model(url).invoke("hi")
    assert time.perf_counter() - start < 5.0
    text = str(info.value)
    assert url in text and "connection refused" in text and "Fix:" in text and "serve-model" in text
    assert "3 attempt" in text  # retried twice with backoff


def test_500_is_retried_then_succeeds(server):
    server.push({"status": 500}, {"content": "recovered"})
    assert _model(server.base_url).invoke("hi").content == "recovered"
    assert len(server.requests) == 2


def test_persistent_500_gives_server_failure(server):
    server.push({"status": 500}, {"status": 502}, {"status": 503})
    with pytest.raises(ModelServerFailureError) as info:
        _model(server.base_url).invoke("hi")
    assert "HTTP 503" in str(info.value) and server.base_url in str(info.value)
    assert len(server.requests) == 3


def test_429_waits_retry_after_then_succeeds(server):
    server.push({"status": 429, "retry_after_s": 0.2}, {"content": "ok"})
    model = _model(server.base_url).model_copy(update={"max_backoff_s": 1.0})
    start = time.perf_counter()
    assert model.invoke("hi").content == "ok"
    assert time.perf_counter() - start >= 0.2  # honoured Retry-After
    assert len(server.requests) == 2


def test_persistent_429_gives_rate_limited(server):
    server.push(*[{"status": 429, "retry_after_s": 0}] * 3)
    with pytest.raises(ModelRateLimitedError, match="HTTP 429"):
        _model(server.base_url).invoke("hi")


def test_slow_server_times_out_within_the_configured_timeout(server):
    server.push({"content": "late", "delay_s": 3.0})
    model = _model(server.base_url, request_timeout_s=0.5)
    start = time.perf_counter()
    with pytest.raises(ModelTimeoutError) as info:
        model.invoke("hi")
    elapsed = time.perf_counter() - start
    assert elapsed < 1.5, f"took {elapsed:.2f}s with a 0.5s timeout"
    assert "0.5s" in str(info.value) and "request_timeout_s" in str(info.value)
    assert len(server.requests) == 1  # timeouts are not retried


@pytest.mark.parametrize(
    "reply",
    [
        {"malformed": True},  # truncated JSON
        {"raw_body": "<html>proxy login</html>"},  # not JSON at all
        {"raw_body": '{"object": "list", "data": []}'},  # JSON of the wrong shape
        {"raw_body": '{"choices": [{"index": 0}]}'},  # a choice without a message
    ],
)
def test_malformed_answers_give_response_error(server, reply):
    server.push(reply)
    with pytest.raises(ModelResponseError, match="not a valid chat completion") as info:
        _model(server.base_url).invoke("hi")
    assert server.base_url in str(info.value) and "Fix:" in str(info.value)


def test_unknown_model_gives_rejected_error_with_fix(server):
    server.push({"status": 404})
    with pytest.raises(ModelRequestRejectedError, match="--model"):
        _model(server.base_url).invoke("hi")


def test_all_errors_are_model_server_errors():
    for cls in (ModelUnreachableError, ModelTimeoutError, ModelRateLimitedError, ModelServerFailureError,
                ModelResponseError, ModelRequestRejectedError, ModelOutputError):
        assert issubclass(cls, ModelServerError)


def test_structured_json_schema_with_logprobs(server):
    server.push({"content": GOOD, "label_probs": {"anomalous": 0.7, "normal": 0.3}})
    result = invoke_structured(_model(server.base_url), [HumanMessage("judge")], Answer)
    assert result.mode == "json_schema" and not result.repaired
    assert result.parsed.label == "anomalous"
    req = server.requests[0]
    fmt = req.body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["required"] == ["label", "confidence", "explanation"]
    assert req.body["logprobs"] is True and req.body["top_logprobs"] == 5
    assert label_probability(result.message) == pytest.approx(0.7)


def test_structured_falls_back_to_json_mode_when_schema_rejected():
    with FakeOpenAIServer(reject_json_schema=True) as srv:
        srv.push({"content": f"```json\n{GOOD}\n```"})
        result = invoke_structured(_model(srv.base_url), [SystemMessage("be brief"), HumanMessage("judge")], Answer)
        assert result.mode == "json_mode" and result.parsed.confidence == 0.9
        first, second = srv.requests
        assert first.body["response_format"]["type"] == "json_schema"
        assert second.body["response_format"] == {"type": "json_object"}
        assert second.system_count == 1 and "JSON schema" in second.messages[0]["content"]


def test_structured_repairs_once(server):
    server.push({"content": '{"label": "broken", "confidence": 2}'}, {"content": GOOD})
    result = invoke_structured(_model(server.base_url), [HumanMessage("judge")], Answer)
    assert result.repaired and result.parsed.label == "anomalous"
    repair_turn = server.requests[1].messages[-1]["content"]
    assert "label" in repair_turn and "confidence" in repair_turn  # the validation error is quoted


def test_structured_gives_up_after_one_repair(server):
    server.push({"content": "I think it is fine."}, {"content": "Still prose."})
    with pytest.raises(ModelOutputError, match="no JSON object"):
        invoke_structured(_model(server.base_url), [HumanMessage("judge")], Answer)
    assert len(server.requests) == 2


def test_check_endpoint_up_and_down(server):
    ok, detail = check_endpoint(server.base_url, "EMPTY", timeout=2.0)
    assert ok and "fake-vlm" in detail
    url = closed_port_url()
    ok, detail = check_endpoint(url, None, timeout=2.0)
    assert not ok and url in detail and "connection refused" in detail and "Fix:" in detail


def test_auto_picks_the_answering_endpoint(server, isolated_home):
    backend = build_backend(load_config(backend="auto", base_url=server.base_url, model="fake-vlm"))
    assert backend.name == "openai" and backend.supports_logprobs
    assert server.base_url in backend.reason and "answered" in backend.reason
    server.push({"content": "hello"})
    assert backend.model.invoke("hi").content == "hello"


def test_concurrent_requests_overlap_on_latency():
    with FakeOpenAIServer(latency_s=0.3, default={"content": "ok"}, decode_images=False) as srv:
        model = _model(srv.base_url)
        start = time.perf_counter()
        replies = model.batch(["a"] * 8, config={"max_concurrency": 8})
        elapsed = time.perf_counter() - start
    assert [r.content for r in replies] == ["ok"] * 8
    assert elapsed < 0.3 * 8 / 2, f"8 requests at 0.3s took {elapsed:.2f}s: the server serialised them"


def test_async_calls_retry_and_map_errors(server):
    import asyncio

    server.push({"status": 429, "retry_after_s": 0}, {"content": "async ok"}, {"malformed": True})
    model = _model(server.base_url)

    async def go():
        first = await model.ainvoke([SystemMessage("a"), SystemMessage("b"), HumanMessage("hi")])
        with pytest.raises(ModelResponseError):
            await model.ainvoke("again")
        return first

    assert asyncio.run(go()).content == "async ok"
    assert server.requests[1].system_count == 1
    with pytest.raises(ModelUnreachableError):
        asyncio.run(_model(closed_port_url()).ainvoke("hi"))


def test_streaming_path_merges_system_messages_and_parses_tool_calls(server):
    server.push({"content": "partial", "tool_calls": [{"name": "zoom", "arguments": {"image_id": "q", "x0": 0, "y0": 0, "x1": 4, "y1": 4}}]})
    model = _model(server.base_url).bind_tools([zoom])
    chunks = list(model.stream([SystemMessage("a"), SystemMessage("b"), HumanMessage("q")]))
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert server.requests[0].body["stream"] is True and server.requests[0].system_count == 1
    assert total.content == "partial"
    assert total.tool_calls[0]["name"] == "zoom" and total.tool_calls[0]["args"]["x1"] == 4
    with pytest.raises(ModelUnreachableError):
        list(_model(closed_port_url()).stream("hi"))


def test_async_structured_falls_back_and_repairs():
    import asyncio

    from agent.backends.structured import ainvoke_structured

    with FakeOpenAIServer(reject_json_schema=True) as srv:
        srv.push({"content": '{"label": "odd"}'}, {"content": GOOD, "label_probs": {"anomalous": 0.6, "normal": 0.4}})
        result = asyncio.run(ainvoke_structured(_model(srv.base_url), [HumanMessage("judge")], Answer))
        assert (result.mode, result.repaired, result.parsed.label) == ("json_mode", True, "anomalous")
        assert [r.body["response_format"]["type"] for r in srv.requests] == ["json_schema", "json_object", "json_object"]
        assert label_probability(result.message) == pytest.approx(0.6)
