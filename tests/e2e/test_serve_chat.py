"""Chat over HTTP: a three-turn session that survives a server restart, and the OpenAI-compatible endpoint
driven by the `openai` Python client (streaming and not)."""

from __future__ import annotations

import base64

import httpx
import pytest
from langchain_core.messages import HumanMessage

from agent.api import AnomalyAgent
from agent.backends.factory import build_backend
from tests.agent_fixtures import label_logprobs, verdict_json
from tests.server_fixtures import ServerThread, serve_config, serve_settings, texture_png

REFS = [("references", (f"ref{i}.png", texture_png(i), "image/png")) for i in range(3)]


def _scripted_server(home, script):
    from agent.server import create_app

    cfg = serve_config(home, backend="scripted")
    backend = build_backend(cfg, script=script)
    agent = AnomalyAgent(cfg, backend=backend)
    return ServerThread(create_app(serve_settings(home), cfg, agent=agent, warm_up=False)), backend.model


def test_three_turn_session_survives_a_restart(tmp_path):
    first_script = [
        {"content": "A dark blob near the top right."},
        {"content": verdict_json("anomalous", regions=[[80, 30, 104, 54]]), "logprobs": label_logprobs(0.9)},
        {"content": "It is anomalous: patch_knn flags a dark blob at (80, 30, 104, 54)."},
        {"content": "", "tool_calls": [{"name": "zoom", "args": {"box": [80, 30, 104, 54]}, "id": "z"}]},
        {"content": "Zoomed in: the blob spans about 24 px, top right."},
    ]
    server, _ = _scripted_server(tmp_path, first_script)
    with server:
        files = [("image", ("bad.png", texture_png(101, defect=True), "image/png")), *REFS]
        r1 = httpx.post(f"{server.url}/v1/sessions", files=files,
                        data={"category": "texture", "message": "Is anything wrong?"}, timeout=60).json()
        assert r1["verdict"]["pred_label"] == "anomalous" and "patch_knn" in r1["answer"] and r1["turn"] == 1
        session = r1["session"]
        r2 = httpx.post(f"{server.url}/v1/sessions/{session}/messages", json={"message": "Where exactly?"},
                        timeout=60).json()
        assert r2["answer"].startswith("Zoomed in") and r2["turn"] == 2

    # a new process: a new agent and app over the same data folder and sessions database
    server2, model2 = _scripted_server(tmp_path, [{"content": "As measured before: one blob, anomalous."}])
    with server2:
        r3 = httpx.post(f"{server2.url}/v1/sessions/{session}/messages", json={"message": "Summarise."},
                        timeout=60).json()
        assert r3["answer"].startswith("As measured before") and r3["turn"] == 3
        assert r3["verdict"]["pred_label"] == "anomalous"
        questions = [m for m in model2.calls[0] if isinstance(m, HumanMessage) and "Question:" in str(m.content)]
        assert len(questions) == 3  # the model saw the whole history
        transcript = httpx.get(f"{server2.url}/v1/sessions/{session}").json()["messages"]
        assert [m["role"] for m in transcript] == ["user", "assistant"] * 3
        assert transcript[4]["text"] == "Summarise."


@pytest.fixture(scope="module")
def oai_server(tmp_path_factory):
    from agent.server import create_app

    home = tmp_path_factory.mktemp("oai")
    with ServerThread(create_app(serve_settings(home), serve_config(home))) as srv:
        for i in range(3):
            httpx.post(f"{srv.url}/v1/memory/examples", files={"image": (f"r{i}.png", texture_png(i), "image/png")},
                       data={"category": "stripes", "label": "normal"}).raise_for_status()
        yield srv


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def test_openai_client_chat_streaming_and_not(oai_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{oai_server.url}/v1", api_key="unused", max_retries=0)
    ids = [m.id for m in client.models.list().data]
    assert ids == ["anomaly-agent", "anomaly-agent/stripes"]
    first = {"role": "user", "content": [
        {"type": "text", "text": "Is this part defective?"},
        {"type": "image_url", "image_url": {"url": _data_url(texture_png(101, defect=True))}}]}
    reply = client.chat.completions.create(model="anomaly-agent/stripes", messages=[first])
    text = reply.choices[0].message.content
    assert text.startswith("**ANOMALOUS**") and "patch_knn" in text
    assert reply.choices[0].finish_reason == "stop" and reply.object == "chat.completion"
    session = reply.model_extra["session"]

    follow = [first, {"role": "assistant", "content": text}, {"role": "user", "content": "Where is it?"}]
    stream = client.chat.completions.create(model="anomaly-agent/stripes", messages=follow, stream=True)
    pieces, finish = [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    answer = "".join(pieces)
    assert finish == "stop" and "region" in answer and not answer.startswith("**")  # a follow-up, no new verdict
    transcript = httpx.get(f"{oai_server.url}/v1/sessions/{session}").json()["messages"]
    assert [m["text"] for m in transcript if m["role"] == "user"] == ["Is this part defective?", "Where is it?"]

    good = {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _data_url(texture_png(100))}}]}
    normal = client.chat.completions.create(model="anomaly-agent", messages=[good],
                                            extra_body={"category": "stripes", "references": "memory"})
    assert normal.choices[0].message.content.startswith("**NORMAL**")


def test_openai_errors(oai_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{oai_server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="no image"):
        client.chat.completions.create(model="anomaly-agent", messages=[{"role": "user", "content": "hi"}])
    remote = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}
    with pytest.raises(openai.BadRequestError, match="data: URL"):
        client.chat.completions.create(model="anomaly-agent", messages=[remote])
    text = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(b"plain text")}}]}
    with pytest.raises(openai.APIStatusError, match="not an image") as info:
        client.chat.completions.create(model="anomaly-agent", messages=[text])
    assert info.value.status_code == 415
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
