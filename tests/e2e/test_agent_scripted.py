"""The agent end to end with the scripted backend: the graph, the tools and the fusion really run."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from agent.api import AnomalyAgent
from agent.backends.factory import build_backend
from agent.config import load_config
from tests.agent_fixtures import DEFECT_BOX, label_logprobs, verdict_json, write_set


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_set(tmp_path_factory.mktemp("agent"))


def make_agent(script, **overrides):
    cfg = load_config(backend="scripted", memory_path="/nonexistent/memory", threads=2, **overrides)
    backend = build_backend(cfg, script=script)
    return AnomalyAgent(cfg, backend=backend), backend.model


def _sent_tool_messages(model):
    return [m for call in model.calls for m in call if isinstance(m, ToolMessage)]


def test_plan_zoom_then_reference_diff_then_decide(images):
    x0, y0, x1, y1 = DEFECT_BOX
    script = [
        {"content": "", "tool_calls": [{"name": "zoom", "args": {"box": [x0, y0, x1, y1]}, "id": "z1"}]},
        {"content": "", "tool_calls": [{"name": "reference_diff", "args": {}, "id": "r1"}]},
        {"content": "The dark blob at the top right is not in any reference."},
        {"content": verdict_json("anomalous", regions=[[x0, y0, x1, y1]]), "logprobs": label_logprobs(0.9)},
    ]
    agent, model = make_agent(script)
    v = agent.detect(images["bad"], category="texture", references=images["refs"])
    assert v.status == "ok", v.error
    assert v.pred_label == "anomalous" and v.score_source == "logprobs"
    tools = [e.tool for e in v.evidence]
    assert tools[:5] == ["patch_knn", "patch_knn_fine", "survey", "zoom", "reference_diff"]
    assert v.usage.model_calls == 4 and v.usage.tool_calls == 3
    assert v.regions[0].bbox_xyxy == DEFECT_BOX
    assert "patch_knn" in v.explanation and "fused score" in v.explanation
    # the model saw the zoomed crop as an image turn, and both tool results
    later = model.calls[1]
    assert any(isinstance(m, HumanMessage) and "zoom" in str(m.content) and "image_url" in str(m.content) for m in later)
    assert {m.name for m in _sent_tool_messages(model)} >= {"zoom", "reference_diff"}
    assert v.prompt_hash and len(v.prompt_hash) == 16


def test_malformed_tool_calls_are_answered_and_the_model_recovers(images):
    bad_json = AIMessage(content="", invalid_tool_calls=[
        {"name": "zoom", "args": "{box: [1,2", "id": "bad1", "error": "not JSON", "type": "invalid_tool_call"}])
    script = [
        bad_json,
        {"content": "", "tool_calls": [{"name": "zoom", "args": {"box": [500, 500, 600, 600]}, "id": "z2"}]},
        {"content": "", "tool_calls": [{"name": "no_such_tool", "args": {}, "id": "u1"}]},
        {"content": "", "tool_calls": [{"name": "zoom", "args": {"box": [0, 0, 64, 64]}, "id": "z3"}]},
        {"content": "Nothing unusual."},
        {"content": verdict_json("normal", "patch_knn scored low."), "logprobs": label_logprobs(0.1)},
    ]
    agent, model = make_agent(script)
    v = agent.detect(images["good"], category="texture", references=images["refs"])
    assert v.status == "ok", v.error
    errors = [m for m in _sent_tool_messages(model) if m.status == "error"]
    texts = " | ".join(str(m.content) for m in errors)
    assert "could not be parsed" in texts
    assert "outside" in texts or "box" in texts
    assert "not a valid tool" in texts
    assert any(e.tool == "zoom" and not e.error for e in v.evidence)


def test_uncertain_triggers_one_reflection(images):
    script = [
        {"content": "Hard to tell."},
        {"content": verdict_json("uncertain", "patch_knn is borderline.")},
        {"content": "", "tool_calls": [{"name": "zoom", "args": {"box": [64, 0, 128, 64]}, "id": "z1"}]},
        {"content": "The zoom shows a dark blob."},
        {"content": verdict_json("anomalous"), "logprobs": label_logprobs(0.95)},
    ]
    agent, model = make_agent(script)
    v = agent.detect(images["bad"], category="texture", references=images["refs"])
    assert v.status == "ok", v.error
    assert v.pred_label == "anomalous"
    assert any("You answered \"uncertain\"" in str(m.content) for m in model.calls[2])
    assert v.usage.model_calls == 5


def test_reflection_is_bounded(images):
    script = [
        {"content": "Hard to tell."},
        {"content": verdict_json("uncertain", "conflicting evidence")},
        {"content": "Still hard."},
        {"content": verdict_json("uncertain", "still conflicting")},
    ]
    agent, _ = make_agent(script)  # max_reflections = 1: a second "uncertain" goes to fusion
    v = agent.detect(images["good"], category="texture", references=images["refs"])
    assert v.status == "ok", v.error
    assert v.score_source == "label"


def test_tool_budget_exhaustion_decides_with_what_it_has(images):
    script = [
        {"content": "", "tool_calls": [
            {"name": "zoom", "args": {"box": [0, 0, 64, 64]}, "id": "a"},
            {"name": "zoom", "args": {"box": [64, 0, 128, 64]}, "id": "b"},
        ]},
        {"content": verdict_json("anomalous"), "logprobs": label_logprobs(0.8)},
    ]
    agent, model = make_agent(script, max_tool_calls=2)  # the survey already used one
    v = agent.detect(images["bad"], category="texture", references=images["refs"])
    assert v.status == "ok", v.error
    assert v.budget_exhausted and "budget" in v.explanation
    refused = [m for m in _sent_tool_messages(model) if "Not run" in str(m.content)]
    assert len(refused) == 1
    assert v.usage.tool_calls == 2


def test_model_call_budget(images):
    script = [
        {"content": "", "tool_calls": [{"name": "zoom", "args": {"box": [0, 0, 64, 64]}, "id": "a"}]},
        {"content": verdict_json("normal", "patch_knn low."), "logprobs": label_logprobs(0.2)},
    ]
    agent, _ = make_agent(script, max_model_calls=2)
    v = agent.detect(images["good"], category="texture", references=images["refs"])
    assert v.status == "ok", v.error
    assert v.budget_exhausted and v.usage.model_calls == 2


def test_invalid_verdict_json_is_repaired_once(images):
    script = [
        {"content": "Looks fine."},
        {"content": "{\"label\": \"fine\", \"explanation\": \"ok\"}"},
        {"content": verdict_json("normal", "patch_knn scored low."), "logprobs": label_logprobs(0.05)},
    ]
    agent, model = make_agent(script)
    v = agent.detect(images["good"], category="texture", references=images["refs"])
    assert v.status == "ok", v.error
    assert v.pred_label == "normal" and v.usage.model_calls == 3
    assert "label" in str(model.calls[-1][-1].content)  # the repair turn names the failing field


def test_script_running_out_is_an_error_record(images):
    agent, _ = make_agent([{"content": "only one step"}])
    v = agent.detect(images["good"], category="texture", references=images["refs"])
    assert v.status == "error" and "script" in v.error.lower()


def test_tools_only_verdict_finds_the_planted_defect(images):
    cfg = load_config(backend="none", memory_path="/nonexistent/memory", threads=2)
    agent = AnomalyAgent(cfg)
    bad = agent.detect(images["bad"], category="texture", references=images["refs"])
    good = agent.detect(images["good"], category="texture", references=images["refs"])
    assert bad.status == good.status == "ok"
    assert bad.pred_score > good.pred_score
    assert bad.pred_label == "anomalous" and bad.score_source == "tools"
    x0, y0, x1, y1 = bad.regions[0].bbox_xyxy
    dx0, dy0, dx1, dy1 = DEFECT_BOX
    assert x0 < dx1 and dx0 < x1 and y0 < dy1 and dy0 < y1  # overlaps the planted blob
    assert "patch_knn" in bad.explanation and str(bad.regions[0].bbox_xyxy[0]) in bad.explanation
