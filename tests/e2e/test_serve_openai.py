"""The OpenAI-compatible endpoint over real HTTP: conversations identified by their whole history (kept apart,
branched on regenerate and edit), a new image starting a new verdict, real streaming (steps in
``reasoning_content`` before the answer, ``usage`` from the model's token counts), and OpenAI's 400s."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from tests.server_fixtures import ServerThread, serve_config, serve_settings, texture_png

openai = pytest.importorskip("openai")


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


FIRST = {"role": "user", "content": [{"type": "text", "text": "Is this part defective?"},
                                     {"type": "image_url", "image_url": {"url": _data_url(texture_png(101, defect=True))}}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from agent.server import create_app

    home = tmp_path_factory.mktemp("oai2")
    with ServerThread(create_app(serve_settings(home), serve_config(home))) as srv:
        for i in range(3):
            httpx.post(f"{srv.url}/v1/memory/examples", files={"image": (f"r{i}.png", texture_png(i), "image/png")},
                       data={"category": "stripes", "label": "normal"}).raise_for_status()
        srv.client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
        yield srv


def _ask(server, messages, **extra):
    reply = server.client.chat.completions.create(model="anomaly-agent/stripes", messages=messages, **extra)
    return reply.choices[0].message.content, reply.model_extra["session"]


def _questions(server, session) -> list[str]:
    transcript = httpx.get(f"{server.url}/v1/sessions/{session}").json()["messages"]
    return [m["text"] for m in transcript if m["role"] == "user"]


def test_same_first_message_conversations_are_kept_apart(server):
    answer_a, session_a = _ask(server, [FIRST])
    answer_b, session_b = _ask(server, [FIRST])
    assert answer_a == answer_b and session_a != session_b  # same words, two conversations
    # both follow up without echoing a session: identical histories so far, so neither lands in the other's
    _, follow_a = _ask(server, [FIRST, {"role": "assistant", "content": answer_a}, {"role": "user", "content": "A asks: where?"}])
    _, follow_b = _ask(server, [FIRST, {"role": "assistant", "content": answer_b}, {"role": "user", "content": "B asks: size?"}])
    assert follow_a != follow_b and {follow_a, follow_b}.isdisjoint({session_a, session_b})
    for session, mine, theirs in ((follow_a, "A asks: where?", "B asks: size?"), (follow_b, "B asks: size?", "A asks: where?")):
        questions = _questions(server, session)
        assert mine in questions and theirs not in questions
    # echoing the session a reply carried picks that conversation, and it continues in place
    echoed, session = _ask(server, [FIRST, {"role": "assistant", "content": answer_a},
                                    {"role": "user", "content": "A again: where?"}], extra_body={"session": session_a})
    assert session == session_a and _questions(server, session_a) == ["Is this part defective?", "A again: where?"]
    assert "region" in echoed and not echoed.startswith("**")  # a follow-up: no new verdict


def test_regenerated_and_edited_turns_branch(server):
    opening = {"role": "user", "content": [{"type": "text", "text": "Check this one."}, FIRST["content"][1]]}
    first, s1 = _ask(server, [opening])
    history = [opening, {"role": "assistant", "content": first}]
    second, s2 = _ask(server, [*history, {"role": "user", "content": "Where exactly?"}])
    assert s2 == s1  # a plain follow-up continues the session
    third, s3 = _ask(server, [*history, {"role": "user", "content": "Where exactly?"},
                              {"role": "assistant", "content": second}, {"role": "user", "content": "How big?"}])
    assert s3 == s1 and _questions(server, s1) == ["Check this one.", "Where exactly?", "How big?"]

    again, regenerated = _ask(server, [*history, {"role": "user", "content": "Where exactly?"}])  # regenerate turn 2
    assert regenerated != s1 and again == second  # a branch from after turn 1: same evidence, same answer
    assert not again.startswith("**")  # it did not judge the image again
    assert _questions(server, s1) == ["Check this one.", "Where exactly?", "How big?"]  # untouched

    edited, branch = _ask(server, [*history, {"role": "user", "content": "Is the left edge fine?"}])  # edit turn 2
    assert branch not in (s1, regenerated) and not edited.startswith("**")
    assert _questions(server, s1)[-1] == "How big?" and _questions(server, branch) == ["Is the left edge fine?"]
    # the branch goes on as a conversation of its own
    _, later = _ask(server, [*history, {"role": "user", "content": "Is the left edge fine?"},
                             {"role": "assistant", "content": edited}, {"role": "user", "content": "Thanks."}])
    assert later == branch


def test_image_in_a_later_message_starts_a_new_verdict(server):
    first, session = _ask(server, [FIRST])
    assert first.startswith("**ANOMALOUS**")
    good = {"role": "user", "content": [{"type": "text", "text": "And this one?"},
                                        {"type": "image_url", "image_url": {"url": _data_url(texture_png(100))}}]}
    second, other = _ask(server, [FIRST, {"role": "assistant", "content": first}, good])
    assert second.startswith("**NORMAL**") and other != session
    follow, same = _ask(server, [FIRST, {"role": "assistant", "content": first}, good,
                                 {"role": "assistant", "content": second}, {"role": "user", "content": "Why?"}])
    assert same == other and not follow.startswith("**")


def test_streaming_sends_steps_then_the_answer(server):
    stream = server.client.chat.completions.create(model="anomaly-agent/stripes", messages=[FIRST], stream=True,
                                                   stream_options={"include_usage": True}, temperature=0.2,
                                                   top_p=0.9, max_tokens=50, seed=1, user="someone")
    roles, reasoning, content, usage, finish = [], [], [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        delta = chunk.choices[0].delta
        roles.append(delta.role)
        extra = delta.model_extra or {}
        if extra.get("reasoning_content"):
            assert not content, "a step after the answer began"
            reasoning.append(extra["reasoning_content"])
        if delta.content:
            content.append(delta.content)
        finish = chunk.choices[0].finish_reason or finish
    assert roles[0] == "assistant" and finish == "stop"
    steps = "".join(reasoning)
    assert "patch_knn" in steps and "verdict: anomalous" in steps
    answer = "".join(content)
    assert answer.startswith("**ANOMALOUS**") and "verdict:" not in answer and len(content) > 1
    assert usage is not None and usage.total_tokens == 0  # tools only: no model tokens


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}},
     "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
])
def test_unsupported_parameters_are_400_in_openai_shape(server, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        server.client.chat.completions.create(model="anomaly-agent/stripes", messages=[FIRST], **extra)
    error = info.value.body
    assert error["param"] == param and error["code"] == "unsupported_parameter" and error["message"]
    assert error["type"] == "invalid_request_error"


def test_validation_errors_are_400_not_422(server):
    for body in ({"model": "anomaly-agent", "messages": []}, {"model": "anomaly-agent"},
                 {"model": "anomaly-agent", "messages": [{"role": "user", "content": 5}]},
                 {"model": "anomaly-agent", "messages": [FIRST], "session": "../../etc"}):
        reply = httpx.post(f"{server.url}/v1/chat/completions", json=body)
        assert reply.status_code == 400, (body, reply.text)
        error = reply.json()["error"]
        assert {"message", "type", "param", "code"} <= set(error) and error["type"] == "invalid_request_error"
    last = httpx.post(f"{server.url}/v1/chat/completions",
                      json={"model": "anomaly-agent", "messages": [FIRST, {"role": "assistant", "content": "x"}]})
    assert last.status_code == 400 and last.json()["error"]["param"] == "messages"


def _usage_responder(body):
    from evals.fakeserver import inspection_responder

    reply = inspection_responder(body)
    reply.usage = {"prompt_tokens": 120, "completion_tokens": 9, "total_tokens": 129}
    return reply


def test_model_backend_streams_incrementally_with_the_models_usage(tmp_path):
    """A slow fake model (0.5 s per call): the role chunk and the first steps arrive long before the answer;
    usage is the fake server's token counts over the turn's calls, streaming and not."""
    from agent.server import create_app
    from evals.fakeserver import FakeOpenAIServer

    with FakeOpenAIServer(latency_s=0.5, responder=_usage_responder) as fake:
        cfg = serve_config(tmp_path, backend="openai", base_url=fake.base_url, model="fake-vlm", max_retries=0)
        with ServerThread(create_app(serve_settings(tmp_path), cfg)) as srv:
            httpx.post(f"{srv.url}/v1/memory/examples", files={"image": ("r.png", texture_png(3), "image/png")},
                       data={"category": "fakecat", "label": "normal"}).raise_for_status()
            client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=120)
            calls = len(fake.requests)
            reply = client.chat.completions.create(model="anomaly-agent/fakecat", messages=[FIRST])
            made = len(fake.requests) - calls
            assert made >= 2 and reply.usage.prompt_tokens == 120 * made and reply.usage.completion_tokens == 9 * made
            assert reply.usage.total_tokens == 129 * made

            calls = len(fake.requests)
            started = time.monotonic()
            arrivals: list[tuple[float, str, dict]] = []
            with httpx.stream("POST", f"{srv.url}/v1/chat/completions", timeout=120, json={
                    "model": "anomaly-agent/fakecat", "messages": [FIRST], "stream": True,
                    "stream_options": {"include_usage": True}}) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        arrivals.append((time.monotonic() - started, line, json.loads(line[6:])))
            made = len(fake.requests) - calls
            first_content = next(t for t, _, c in arrivals if c["choices"] and c["choices"][0]["delta"].get("content"))
            assert arrivals[0][2]["choices"][0]["delta"]["role"] == "assistant"
            assert arrivals[0][0] < first_content - 0.4  # the role chunk came at once, not with the answer
            steps = [t for t, _, c in arrivals if c["choices"] and c["choices"][0]["delta"].get("reasoning_content")]
            assert steps and steps[0] < first_content - 0.4  # steps streamed while the model worked
            usage = arrivals[-1][2]["usage"]
            assert usage == {"prompt_tokens": 120 * made, "completion_tokens": 9 * made, "total_tokens": 129 * made}

            # a follow-up: the model's answer reaches the client word by word as the model writes it
            fake.stream_piece_s = 0.15
            answer = "fake server: no tool needed; the survey evidence is enough."
            history = [FIRST, {"role": "assistant", "content": reply.choices[0].message.content},
                       {"role": "user", "content": "Why?"}]
            started = time.monotonic()
            pieces: list[tuple[float, str]] = []
            for chunk in client.chat.completions.create(model="anomaly-agent/fakecat", messages=history, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append((time.monotonic() - started, chunk.choices[0].delta.content))
            assert "".join(p for _, p in pieces) == answer
            assert len(pieces) >= 4 and pieces[-1][0] - pieces[0][0] >= 0.15 * 4  # sent as they came, not at the end
            again = client.chat.completions.create(model="anomaly-agent/fakecat", messages=history)
            assert again.choices[0].message.content == answer  # streaming or not, the same reply

            # the page's chat stream does the same: answer_delta events as the model writes, then the reply
            with httpx.stream("POST", f"{srv.url}/v1/sessions/{reply.session}/messages", json={"message": "Why?"},
                              headers={"Accept": "text/event-stream"}, timeout=120) as events:
                lines = [line for line in events.iter_lines() if line.startswith(("event: ", "data: "))]
            kinds = [line[7:] for line in lines if line.startswith("event: ")]
            deltas = [json.loads(lines[i + 1][6:])["text"] for i, line in enumerate(lines) if line == "event: answer_delta"]
            assert "chat_turn" not in kinds and "answer_token" not in kinds and kinds[-2:] == ["reply", "done"]
            assert "".join(deltas) == answer == json.loads(lines[-3][6:])["answer"] and len(deltas) >= 4
            # only a chat turn's own calls stream; the detection's turns and the scored verdict are read whole
            scored = [r.body for r in fake.requests if r.body.get("response_format")]
            assert scored and not any(b.get("stream") for b in scored)
            assert any(b.get("stream") for b in (r.body for r in fake.requests))
