"""The scripted backend: replay from Python, JSON/YAML files and saved traces."""

from __future__ import annotations

import json

import pytest
import yaml
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage, messages_to_dict

from agent.backends.errors import ScriptExhaustedError
from agent.backends.logprobs import label_probability
from agent.backends.scripted import ScriptedChatModel, load_script
from agent.backends.structured import invoke_structured
from agent.errors import ModelServerError, UserInputError

THREE_STEPS = [
    {"content": "", "tool_calls": [{"name": "patch_knn", "args": {"image_id": "query"}}]},
    {"content": "", "tool_calls": [{"name": "zoom", "args": {"image_id": "query", "box": [0, 0, 8, 8]}, "id": "z1"}]},
    {"content": '{"label": "anomalous"}'},
]


def zoom(image_id: str, box: list[int]) -> str:
    """Crop a region."""
    return image_id


def patch_knn(image_id: str) -> str:
    """Score patches against references."""
    return image_id


def _run_exchange(model) -> list[AIMessage]:
    """Drive a 3-step tool loop the way the agent does: call, answer tool calls, call again."""
    history = [HumanMessage("is it anomalous?")]
    replies = []
    for _ in range(3):
        reply = model.invoke(history)
        replies.append(reply)
        history.append(reply)
        for call in reply.tool_calls:
            history.append(ToolMessage(content=f"{call['name']} ran", tool_call_id=call["id"]))
    return replies


def test_replays_three_step_tool_calling_exchange():
    base = ScriptedChatModel(THREE_STEPS)
    bound = base.bind_tools([patch_knn, zoom])
    replies = _run_exchange(bound)
    assert [r.tool_calls[0]["name"] if r.tool_calls else None for r in replies] == ["patch_knn", "zoom", None]
    assert replies[0].tool_calls[0]["id"] == "call_0_0"  # generated when missing
    assert replies[1].tool_calls[0]["id"] == "z1"
    assert replies[2].content == '{"label": "anomalous"}'
    # the binding shares the base model's cursor and records every input
    assert base.steps_used == 3
    assert [len(c) for c in base.calls] == [1, 3, 5]
    assert isinstance(base.calls[2][-1], ToolMessage)
    tool_names = [t["function"]["name"] for t in base.call_kwargs[0]["tools"]]
    assert tool_names == ["patch_knn", "zoom"]


def test_exhausted_script_fails_loudly():
    model = ScriptedChatModel([{"content": "only one"}])
    model.invoke("a")
    with pytest.raises(ScriptExhaustedError, match=r"1 step\(s\) and call 2") as info:
        model.invoke("b")
    assert isinstance(info.value, ModelServerError)
    assert "Fix:" in str(info.value)


def test_reset_rewinds():
    model = ScriptedChatModel(["x"])  # a bare string is a content-only step
    model.invoke("a")
    model.reset()
    assert model.invoke("a").content == "x" and len(model.calls) == 1


def test_from_json_and_yaml_files(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(THREE_STEPS))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"script": THREE_STEPS}))
    for name in ("s.json", "s.yaml"):
        model = ScriptedChatModel.from_file(tmp_path / name)
        replies = _run_exchange(model)
        assert replies[1].tool_calls[0]["args"] == {"image_id": "query", "box": [0, 0, 8, 8]}
        assert model.model_id == f"scripted:{name}"


def test_replays_ai_messages_of_a_saved_trace(tmp_path):
    trace_messages = [
        HumanMessage("look"),
        AIMessage("", tool_calls=[{"name": "zoom", "args": {"image_id": "q", "box": [1, 2, 3, 4]}, "id": "t1"}]),
        ToolMessage("zoomed", tool_call_id="t1"),
        AIMessage('{"label": "normal"}'),
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"verdict": {}, "messages": messages_to_dict(trace_messages)}))
    model = ScriptedChatModel.from_file(path)
    assert len(model.script) == 2
    first = model.invoke("look")
    assert first.tool_calls[0]["args"]["box"] == [1, 2, 3, 4]
    assert model.invoke("again").content == '{"label": "normal"}'


@pytest.mark.parametrize(
    ("text", "match"),
    [("[]", "no AI messages"), ("{bad json", "cannot be parsed"), ('[{"contnet": "x"}]', "unknown key")],
)
def test_bad_script_files_are_user_errors(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserInputError, match=match):
        load_script(path)


def test_missing_script_file():
    with pytest.raises(UserInputError, match="not found"):
        load_script("/nonexistent/script.yaml")


def test_logprobs_pass_through_and_structured_text_mode():
    logprobs = [
        {"token": '{"', "logprob": 0.0, "top_logprobs": []},
        {"token": "label", "logprob": 0.0, "top_logprobs": []},
        {"token": '":', "logprob": 0.0, "top_logprobs": []},
        {"token": ' "', "logprob": 0.0, "top_logprobs": []},
        {"token": "anom", "logprob": -0.1, "top_logprobs": [{"token": "anom", "logprob": -0.1054}, {"token": "normal", "logprob": -2.3026}]},
        {"token": 'alous"}', "logprob": 0.0, "top_logprobs": []},
    ]
    model = ScriptedChatModel([{"content": "```json\n{\"label\": \"anomalous\"}\n```", "logprobs": logprobs}])
    assert model.has_logprobs

    from typing import Literal

    from pydantic import BaseModel

    class Answer(BaseModel):
        label: Literal["normal", "anomalous"]

    result = invoke_structured(model, [HumanMessage("judge")], Answer)
    assert result.mode == "text" and result.parsed.label == "anomalous"
    assert label_probability(result.message) == pytest.approx(0.9 / (0.9 + 0.1), abs=1e-3)
    # text mode tells the model the schema in a (single) system message
    assert "JSON schema" in model.calls[0][0].content


def test_structured_asks_models_with_a_logprobs_setting_for_logprobs():
    from pydantic import BaseModel

    class WithLogprobs(ScriptedChatModel):
        logprobs: bool = False  # like ChatOpenAI and the transformers backend

    class Answer(BaseModel):
        label: str

    plain = ScriptedChatModel(['{"label": "normal"}'])
    invoke_structured(plain, [HumanMessage("judge")], Answer)
    assert "logprobs" not in plain.call_kwargs[0]
    scoring = WithLogprobs(['{"label": "normal"}'])
    invoke_structured(scoring, [HumanMessage("judge")], Answer)
    assert scoring.call_kwargs[0]["logprobs"] is True and scoring.call_kwargs[0]["top_logprobs"] == 5
