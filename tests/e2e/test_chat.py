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
    assert reply.answer.startswith(f"It is {reply.verdict.pred_label}") and "patch_knn" in reply.answer


def test_follow_ups_without_model_are_answered_by_the_measurements(tmp_path):
    """Each follow-up gets its own answer; "zoom into the top left" runs the zoom tool (no model needed)."""
    images = write_set(tmp_path)
    cfg = load_config(backend="none", memory_path="/nonexistent/memory", threads=2,
                      sessions_path=tmp_path / "s.sqlite")
    agent = AnomalyAgent(cfg)
    first = agent.chat("hi", image=str(images["bad"]), references=images["refs"])
    assert first.verdict.pred_label == "anomalous" and "zoom into the top left" in first.answer
    answers = {q: agent.chat(q, session=first.session).answer
               for q in ("Zoom into the top left", "Where is the defect?", "How sure are you?", "Why?")}
    assert len(set(answers.values())) == 4  # no repeated paragraph
    zoom = answers["Zoom into the top left"]
    assert zoom.startswith("Zoomed into the top left of the 128x128 image (box [0, 0, 64, 64])")
    crop = zoom.split("saved as ")[1].split(". ")[0]
    from PIL import Image

    assert Image.open(crop).size == (512, 512)
    assert "region(s) of the 128x128 image: top-right" in answers["Where is the defect?"]
    assert answers["How sure are you?"].startswith("Score ") and "threshold 0.50" in answers["How sure are you?"]
    assert "patch_knn" in answers["Why?"]
    tools = [e["tool"] for e in agent.session_state(first.session)["evidence"]]
    assert tools.count("zoom") == 1 and tools.count("patch_knn") == 1  # the zoom ran; nothing was re-measured
    right = agent.chat("zoom into the defect", session=first.session).answer
    assert right.startswith("Zoomed into the strongest region") and "lie there" in right


def test_chat_message_without_image_names_the_fix_not_an_invented_session(tmp_path, isolated_home, capsys):
    from agent.cli import main

    assert main(["chat", "--message", "hi", "--backend", "none"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "chat needs an image to start a session" in lines[0] and "session " not in lines[0].split("Fix:")[0]
    assert main(["chat", "--message", "hi", "--session", "abc123", "--backend", "none"]) == 2
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")][0]
    assert "no saved session 'abc123'" in line and "Fix:" in line
