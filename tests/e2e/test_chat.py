"""Chat: two turns, then the session resumes from SqliteSaver (a fresh agent) with its history."""

from __future__ import annotations

from langchain_core.messages import HumanMessage, ToolMessage

from agent.api import AnomalyAgent
from agent.backends.factory import build_backend
from agent.config import load_config
from tests.agent_fixtures import label_logprobs, verdict_json, write_set


def _agent(tmp_path, script):
    cfg = load_config(backend="scripted", memory_path="/nonexistent/memory", threads=2,
                      sessions_path=tmp_path / "sessions.sqlite")
    backend = build_backend(cfg, script=script)
    return AnomalyAgent(cfg, backend=backend), backend.model


def test_two_turns_then_resume(tmp_path):
    images = write_set(tmp_path)
    first_script = [
        {"content": "A dark blob near the top right."},
        {"content": verdict_json("anomalous", regions=[[80, 30, 104, 54]]), "logprobs": label_logprobs(0.9)},
        {"content": "It is anomalous: patch_knn flags a dark blob at (80, 30, 104, 54)."},
        {"content": "", "tool_calls": [{"name": "zoom", "args": {"box": [80, 30, 104, 54]}, "id": "z"}]},
        {"content": "Zoomed in: the blob spans about 24 px, top right."},
    ]
    agent, model = _agent(tmp_path, first_script)
    r1 = agent.chat("Is anything wrong?", image=str(images["bad"]), category="texture", references=images["refs"])
    assert r1.verdict is not None and r1.verdict.pred_label == "anomalous"
    assert "patch_knn" in r1.answer
    r2 = agent.chat("Where exactly?", session=r1.session)
    assert r2.answer.startswith("Zoomed in")
    # the follow-up reused the gathered evidence: patch_knn ran once, and the turn ran only the zoom
    state = agent.session_state(r1.session)
    assert [e["tool"] for e in state["evidence"]].count("patch_knn") == 1
    assert any(isinstance(m, ToolMessage) and m.name == "zoom" for m in state["messages"])

    # a new agent (as in a new process) resumes the saved session with its history
    resumed, model2 = _agent(tmp_path, [{"content": "As measured before: one blob, anomalous."}])
    r3 = resumed.chat("Summarise.", session=r1.session)
    assert r3.answer.startswith("As measured before")
    sent = model2.calls[0]
    questions = [m for m in sent if isinstance(m, HumanMessage) and "Question:" in str(m.content)]
    assert len(questions) == 3  # the two earlier questions and this one
    assert r3.verdict.pred_label == "anomalous"


def test_chat_without_model_returns_the_measured_verdict(tmp_path):
    images = write_set(tmp_path)
    cfg = load_config(backend="none", memory_path="/nonexistent/memory", threads=2,
                      sessions_path=tmp_path / "s.sqlite")
    agent = AnomalyAgent(cfg)
    reply = agent.chat("Is it ok?", image=str(images["good"]), references=images["refs"])
    assert "patch_knn" in reply.answer and "No model is configured" in reply.answer
