"""The agent over real HTTP against the fake OpenAI-compatible server (the vLLM code path)."""

from __future__ import annotations

import asyncio

from agent.api import AnomalyAgent
from agent.config import load_config
from evals.fakeserver import FakeOpenAIServer
from tests.agent_fixtures import DEFECT_BOX, verdict_json, write_set


def test_agent_tool_loop_and_logprob_score_over_http(tmp_path):
    images = write_set(tmp_path)
    x0, y0, x1, y1 = DEFECT_BOX
    script = [
        {"tool_calls": [{"name": "zoom", "arguments": {"box": [x0, y0, x1, y1]}, "id": "call_z"}]},
        {"tool_calls": [{"name": "zoom", "arguments": "{not json", "id": "call_bad"}]},
        {"content": "A dark blob, top right, not in the references."},
        {"content": verdict_json("anomalous", regions=[[x0, y0, x1, y1]]),
         "label_probs": {"anomalous": 0.8, "normal": 0.2}},
    ]
    with FakeOpenAIServer(script=script) as srv:
        cfg = load_config(backend="openai", base_url=srv.base_url, model=srv.models[0],
                          memory_path="/nonexistent/memory", threads=2, max_retries=0)
        agent = AnomalyAgent.from_config(cfg)
        v = agent.detect(images["bad"], category="texture", references=images["refs"])
        requests = list(srv.requests)
    assert v.status == "ok", v.error
    assert v.score_source == "logprobs" and v.pred_label == "anomalous"
    assert v.model_id == srv.models[0]
    assert [e.tool for e in v.evidence][:4] == ["patch_knn", "patch_knn_fine", "survey", "zoom"]
    first = requests[0]
    assert first.system_count == 1
    assert {"zoom", "patch_knn", "reference_diff"} <= set(first.tool_names)
    assert "patch_knn_fine" not in first.tool_names  # the survey's second scale is not offered to the model
    assert len(first.images) >= 2 and all(hasattr(img, "shape") for img in first.images)  # query + refs decode
    second = requests[1]
    tool_msgs = [m for m in second.messages if m.get("role") == "tool"]
    assert tool_msgs and tool_msgs[-1]["tool_call_id"] == "call_z"
    third = requests[2]
    assert any("could not be parsed" in str(m.get("content")) for m in third.messages if m.get("role") == "tool")
    decide = requests[-1]
    assert decide.body.get("logprobs") is True
    assert v.usage.model_calls == 4


def test_concurrent_adetect_over_http(tmp_path):
    images = write_set(tmp_path)
    reply = {"content": verdict_json("normal", "patch_knn scored low."), "label_probs": {"anomalous": 0.1, "normal": 0.9}}
    with FakeOpenAIServer(script=[reply] * 4) as srv:
        cfg = load_config(backend="openai", base_url=srv.base_url, model=srv.models[0],
                          memory_path="/nonexistent/memory", threads=2, max_retries=0, max_model_calls=1)
        agent = AnomalyAgent.from_config(cfg)

        async def run_all():
            return await asyncio.gather(*[
                agent.adetect(images["good"], category="texture", references=images["refs"]) for _ in range(4)
            ])

        verdicts = asyncio.run(run_all())
    assert all(v.status == "ok" for v in verdicts), [v.error for v in verdicts]
    assert all(v.usage.model_calls == 1 and v.budget_exhausted for v in verdicts)
