"""Issue 22, items 2 and 3: the agent against the fake vLLM-like server over real HTTP.

Label probabilities from the absolute mass (a weak reading is "logprobs-partial"), an answer cut at
max_tokens is never read, Hermes tool-call text in the content is parsed (a failed parse goes back to
the model as an error), the sampling fields are sent, Retry-After is honoured up to the request
timeout, and an undecodable image is a 400 that names the fix.
"""

from __future__ import annotations

import time

import pytest
from langchain_core.messages import HumanMessage

from agent.api import AnomalyAgent
from agent.backends.errors import ModelRateLimitedError, ModelRequestRejectedError
from agent.backends.openai_backend import build_openai_model
from agent.config import load_config
from evals.fakeserver import FakeOpenAIServer
from tests.agent_fixtures import DEFECT_BOX, verdict_json, write_set


def _agent(srv, **overrides) -> AnomalyAgent:
    settings = {"backend": "openai", "base_url": srv.base_url, "model": srv.models[0],
                "memory_path": "/nonexistent/memory", "threads": 2, "max_retries": 0}
    settings.update(overrides)
    return AnomalyAgent.from_config(load_config(**settings))


def _tool_messages(request) -> list[dict]:
    return [m for m in request.messages if m.get("role") == "tool"]


def test_every_request_sends_temperature_seed_and_max_tokens(tmp_path):
    images = write_set(tmp_path)
    script = [{"content": "nothing to add"},
              {"content": verdict_json("normal"), "label_probs": {"normal": 0.9, "anomalous": 0.1}}]
    with FakeOpenAIServer(script=script) as srv:
        v = _agent(srv).detect(images["good"], category="texture", references=images["refs"])
        requests = list(srv.requests)
    assert v.status == "ok", v.error
    assert len(requests) == 2
    for req in requests:  # the tool turn and the structured verdict call alike
        assert req.body["temperature"] == 0.0
        assert req.body["seed"] == 0
        assert req.body["max_completion_tokens"] == 1024


def test_sampling_fields_are_configurable():
    with FakeOpenAIServer(default="ok") as srv:
        model = build_openai_model(load_config(base_url=srv.base_url, model=srv.models[0], temperature=0.7,
                                               seed=7, max_tokens=64))
        model.invoke("hi")
        (req,) = srv.requests
    assert req.body["temperature"] == 0.7 and req.body["max_completion_tokens"] == 64
    assert req.body["seed"] == 7


def test_hermes_tool_call_text_in_the_content_runs_the_tool(tmp_path):
    images = write_set(tmp_path)
    x0, y0, x1, y1 = DEFECT_BOX
    script = [
        {"content": "Let me look closer.", "tools_as_text": True,
         "tool_calls": [{"name": "zoom", "arguments": {"box": [x0, y0, x1, y1]}}]},
        {"content": "A dark blob."},
        {"content": verdict_json("anomalous"), "label_probs": {"anomalous": 0.8, "normal": 0.2}},
    ]
    with FakeOpenAIServer(script=script) as srv:
        v = _agent(srv).detect(images["bad"], category="texture", references=images["refs"])
        requests = list(srv.requests)
    assert v.status == "ok", v.error
    assert "zoom" in [e.tool for e in v.evidence]
    second = requests[1]
    assistant = [m for m in second.messages if m.get("role") == "assistant"][-1]
    assert assistant["tool_calls"][0]["function"]["name"] == "zoom"
    (tool,) = _tool_messages(second)
    assert tool["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert "could not be parsed" not in str(tool["content"])
    assert all(r.rejected is None for r in requests)


def test_a_failed_hermes_parse_goes_back_to_the_model_as_an_error(tmp_path):
    images = write_set(tmp_path)
    script = [
        # vLLM's parser failed on this: it arrives as raw text, with no tool_calls
        {"content": "checking", "tools_as_text": True, "tool_calls": [{"name": "zoom", "arguments": "{box: [1, 2"}]},
        {"content": "fine"},
        {"content": verdict_json("normal"), "label_probs": {"anomalous": 0.2, "normal": 0.8}},
    ]
    with FakeOpenAIServer(script=script) as srv:
        v = _agent(srv).detect(images["good"], category="texture", references=images["refs"])
        requests = list(srv.requests)
    assert v.status == "ok", v.error
    assert "zoom" not in [e.tool for e in v.evidence]
    (tool,) = _tool_messages(requests[1])
    assert "could not be parsed" in str(tool["content"]) and "not valid JSON" in str(tool["content"])
    # the failed call went back as JSON arguments: vLLM json.loads them (a raw string is a 400)
    assert all(r.rejected is None for r in requests), [r.rejected for r in requests]


@pytest.mark.parametrize(("label_probs", "source"), [
    ({"normal": 0.3, "anomalous": 0.1}, "logprobs-partial"),  # label tokens under half the mass
    ({"normal": 0.7, "anomalous": 0.2}, "logprobs"),  # the full label mass
])
def test_the_label_mass_sets_the_score_source(tmp_path, label_probs, source):
    images = write_set(tmp_path)
    script = [{"content": "no tool needed"}, {"content": verdict_json("normal"), "label_probs": label_probs}]
    with FakeOpenAIServer(script=script) as srv:
        v = _agent(srv).detect(images["good"], category="texture", references=images["refs"])
    assert v.status == "ok", v.error
    assert v.score_source == source


def test_an_answer_cut_at_max_tokens_is_never_read_as_a_label(tmp_path):
    images = write_set(tmp_path)
    verdict = {"content": verdict_json("normal", "a long explanation " * 20), "label_probs": {"normal": 0.99, "anomalous": 0.01}}
    script = [{"content": "ok"}, verdict, verdict]  # the verdict, then the repair turn: both cut
    with FakeOpenAIServer(script=script) as srv:
        v = _agent(srv, max_tokens=24).detect(images["bad"], category="texture", references=images["refs"])
    assert v.status == "ok", v.error
    assert v.score_source == "tools"  # the cut "normal" did not count
    assert "truncated" in v.explanation and "max_tokens" in v.explanation


def test_retry_after_is_honoured_beyond_the_backoff_cap():
    with FakeOpenAIServer(script=[{"status": 429, "retry_after_s": 0.6}, {"content": "ok"}]) as srv:
        model = build_openai_model(load_config(base_url=srv.base_url, model=srv.models[0], max_retries=1))
        model = model.model_copy(update={"max_backoff_s": 0.05})
        start = time.perf_counter()
        assert model.invoke("hi").content == "ok"
    assert time.perf_counter() - start >= 0.6  # was capped at max_backoff_s


def test_retry_after_is_capped_at_the_request_timeout():
    with FakeOpenAIServer(script=[{"status": 429, "retry_after_s": 600}] * 2) as srv:
        model = build_openai_model(load_config(base_url=srv.base_url, model=srv.models[0], max_retries=1,
                                               request_timeout_s=0.5))
        start = time.perf_counter()
        with pytest.raises(ModelRateLimitedError):
            model.invoke("hi")
    assert 0.45 <= time.perf_counter() - start < 5.0


def test_an_undecodable_image_is_a_400_naming_the_fix():
    bad = HumanMessage(content=[{"type": "text", "text": "look"},
                                {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}])
    with FakeOpenAIServer(default="ok") as srv:
        model = build_openai_model(load_config(base_url=srv.base_url, model=srv.models[0], max_retries=0))
        with pytest.raises(ModelRequestRejectedError) as err:
            model.invoke([bad])
        (req,) = srv.requests
    assert err.value.status_code == 400
    assert "Failed to load image" in str(err.value) and "valid PNG/JPEG" in str(err.value)
    assert req.rejected and "cannot identify image file" in req.rejected


def test_a_cut_answer_in_json_mode_is_reported_as_truncated_not_parsed():
    from pydantic import BaseModel

    from agent.backends.errors import ModelOutputError
    from agent.backends.structured import invoke_structured

    class Verdict(BaseModel):
        label: str

    # a server without json_schema: JSON mode, where the client itself does not refuse a cut answer
    long = '{"label": "normal"}' + " and more words" * 20
    with FakeOpenAIServer(script=[{"content": long}, {"content": long}], reject_json_schema=True) as srv:
        model = build_openai_model(load_config(base_url=srv.base_url, model=srv.models[0], max_retries=0,
                                               max_tokens=12))
        with pytest.raises(ModelOutputError) as err:
            invoke_structured(model, [HumanMessage("judge")], Verdict)
        bodies = [r.body for r in srv.requests if r.rejected is None and not r.body.get("response_format", {}).get("json_schema")]
    text = str(err.value)
    assert "truncated" in text and "finish_reason 'length'" in text
    assert "Fix: raise max_tokens (ANOMALY_AGENT_MAX_TOKENS)" in text
    assert bodies and all(b["max_completion_tokens"] == 12 for b in bodies)
