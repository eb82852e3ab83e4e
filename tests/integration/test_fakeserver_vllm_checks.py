"""The fake server refuses what vLLM refuses, with vLLM's status and error body, and our client maps
each refusal to one line that quotes the server and names the fix (issue 12)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from langchain_core.messages import HumanMessage

from agent.backends.errors import (
    ModelRequestRejectedError,
    is_structured_output_rejection,
    rejection_fix,
)
from agent.backends.messages import human_message
from agent.backends.openai_backend import build_openai_model
from agent.config import load_config
from agent.tooling import schema_tool
from evals.fakeserver import FakeOpenAIServer


def _model(srv, **kw):
    return build_openai_model(load_config(base_url=srv.base_url, model=kw.pop("model", srv.models[0]), max_retries=0), **kw)


def _post(srv, body: dict) -> httpx.Response:
    return httpx.post(f"{srv.base_url}/chat/completions", json={"model": srv.models[0], **body}, timeout=10)


def test_error_body_has_vllms_shape():
    with FakeOpenAIServer() as srv:
        r = _post(srv, {"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "The model `nope` does not exist.", "type": "NotFoundError",
                                  "param": None, "code": 404}}


def test_unknown_model_is_a_404_naming_the_model_setting():
    with FakeOpenAIServer(default="hi") as srv, pytest.raises(ModelRequestRejectedError) as err:
        _model(srv, model="Qwen/Qwen3-VL-8B-Instruct").invoke("hello")
    assert err.value.status_code == 404
    assert "The model `Qwen/Qwen3-VL-8B-Instruct` does not exist" in str(err.value) and "--model" in str(err.value)


def test_tool_choice_auto_needs_tool_calling_enabled():
    with FakeOpenAIServer(default="hi", enable_auto_tool_choice=False) as srv:
        with pytest.raises(ModelRequestRejectedError) as err:  # tools without tool_choice: vLLM's default is "auto"
            _model(srv).bind_tools([schema_tool("zoom")]).invoke("hello")
        assert _model(srv).invoke("no tools").content == "hi"
    text = str(err.value)
    assert '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set' in text
    assert "anomaly-agent serve-model" in text


def test_top_logprobs_over_max_logprobs():
    with FakeOpenAIServer(default="hi", max_logprobs=3) as srv, pytest.raises(ModelRequestRejectedError) as err:
        _model(srv, logprobs=True, top_logprobs=5).invoke("hello")
    assert "Requested sample logprobs of 5, which is greater than max allowed: 3" in str(err.value)
    assert "--max-logprobs" in str(err.value)


def test_images_per_request_are_counted_over_all_messages():
    pixels = [np.full((16, 16, 3), v, np.uint8) for v in (0, 80, 160)]
    with FakeOpenAIServer(default="hi", max_images=2) as srv:
        ok = _model(srv).invoke([human_message("two", pixels[:2])])
        with pytest.raises(ModelRequestRejectedError) as err:
            _model(srv).invoke([human_message("one", pixels[:1]), HumanMessage("and"), human_message("two", pixels[1:])])
    assert ok.content == "hi"
    assert "At most 2 image(s) may be provided in one prompt" in str(err.value)
    assert "max_images_per_request" in str(err.value)


def test_images_only_in_user_messages():
    block = human_message("x", [np.zeros((8, 8, 3), np.uint8)]).content
    with FakeOpenAIServer(default="hi") as srv:
        r = _post(srv, {"messages": [{"role": "user", "content": "hi"},
                                     {"role": "assistant", "content": None, "tool_calls": [
                                         {"id": "c1", "type": "function", "function": {"name": "zoom", "arguments": "{}"}}]},
                                     {"role": "tool", "tool_call_id": "c1", "content": block}]})
        assert srv.requests[-1].rejected
    assert r.status_code == 400
    assert "only allowed for messages with role 'user'" in r.json()["error"]["message"]


def test_only_structured_output_rejections_fall_back():
    assert is_structured_output_rejection(400, "response_format of type json_schema is not supported by this server")
    assert is_structured_output_rejection(400, "The provided JSON schema contains features not supported by xgrammar.")
    assert not is_structured_output_rejection(400, "At most 4 image(s) may be provided in one prompt.")
    assert not is_structured_output_rejection(404, "json_schema")
    assert not is_structured_output_rejection(400, "Requested sample logprobs of 30, which is greater than max allowed: 20")
    assert "the server refused a request parameter" in rejection_fix("something else entirely")
