"""build_backend: names, errors and the auto order (endpoint, local weights, none)."""

from __future__ import annotations

import sys
import types

import pytest

from agent.backends import BACKEND_NAMES, build_backend
from agent.backends.openai_backend import OpenAIChatModel
from agent.backends.scripted import ScriptedChatModel
from agent.config import AgentConfig, load_config
from agent.errors import UserInputError
from evals.fakeserver import FakeOpenAIServer, closed_port_url


def test_names_match_config():
    from agent.config import BACKENDS

    assert BACKEND_NAMES == BACKENDS


def test_unknown_name_lists_valid_ones():
    config = AgentConfig.model_construct(**{**load_config().model_dump(), "backend": "gpt"})
    with pytest.raises(UserInputError) as info:
        build_backend(config)
    for name in BACKEND_NAMES:
        assert name in str(info.value)


def test_none(isolated_home):
    backend = build_backend(load_config(backend="none"))
    assert (backend.name, backend.model, backend.supports_logprobs) == ("none", None, False)


def test_openai_needs_base_url(isolated_home):
    with pytest.raises(UserInputError, match="ANOMALY_AGENT_BASE_URL"):
        build_backend(load_config(backend="openai"))


def test_openai_is_built_lazily_without_contacting_the_server(isolated_home):
    url = closed_port_url()
    backend = build_backend(load_config(backend="openai", base_url=url, request_timeout_s=7, image_max_side=512))
    assert backend.name == "openai" and isinstance(backend.model, OpenAIChatModel)
    assert backend.model.request_timeout == 7 and backend.model.image_max_side == 512
    assert backend.model.max_retries == 0 and backend.model.retries == 2  # our retry policy only


def test_scripted_from_code_and_from_config(tmp_path, isolated_home):
    backend = build_backend(load_config(backend="scripted"), script=[{"content": "x"}])
    assert backend.name == "scripted" and isinstance(backend.model, ScriptedChatModel)
    assert not backend.supports_logprobs
    path = tmp_path / "s.yaml"
    path.write_text("- content: hello\n  logprobs: []\n")
    backend = build_backend(load_config(backend="scripted", script=path))
    assert backend.model.invoke("hi").content == "hello"
    assert str(path) in backend.reason
    with pytest.raises(UserInputError, match="--script"):
        build_backend(load_config(backend="scripted"))


@pytest.fixture
def fake_local(monkeypatch):
    """Stand-in for agent.backends.transformers_backend (built by another module's owner)."""
    module = types.ModuleType("agent.backends.transformers_backend")
    state = {"ok": False, "detail": "weights not found in the HF cache"}

    class TransformersChatModel:
        @classmethod
        def from_config(cls, config, **overrides):
            inst = cls()
            inst.config = config
            inst.overrides = overrides
            return inst

    module.TransformersChatModel = TransformersChatModel
    module.local_model_status = lambda config: (state["ok"], state["detail"])
    monkeypatch.setitem(sys.modules, "agent.backends.transformers_backend", module)
    return state


def test_auto_prefers_answering_endpoint(fake_local, isolated_home):
    fake_local["ok"] = True
    with FakeOpenAIServer(models=["m1"]) as srv:
        backend = build_backend(load_config(base_url=srv.base_url, model="m1"))
    assert backend.name == "openai" and backend.model_id == "m1"
    assert backend.reason.startswith("auto chose openai:") and "answered" in backend.reason


def test_auto_falls_back_to_local_weights(fake_local, isolated_home):
    fake_local.update(ok=True, detail="found at /cache/qwen")
    url = closed_port_url()
    backend = build_backend(load_config(base_url=url))
    assert backend.name == "transformers" and backend.model_id == "Qwen/Qwen3-VL-2B-Instruct"
    assert backend.model.overrides == {"max_new_tokens": 512}  # config.max_new_tokens reaches the model
    assert url in backend.reason and "connection refused" in backend.reason and "/cache/qwen" in backend.reason


def test_auto_falls_back_to_none_and_says_why(fake_local, isolated_home):
    backend = build_backend(load_config())
    assert backend.name == "none" and backend.model is None
    assert "no endpoint configured" in backend.reason and "weights not found" in backend.reason
    assert "Fix:" in backend.reason


def test_auto_without_transformers_module(monkeypatch, isolated_home):
    monkeypatch.setitem(sys.modules, "agent.backends.transformers_backend", None)  # import fails
    backend = build_backend(load_config())
    assert backend.name == "none" and "in-process backend unavailable" in backend.reason


def test_auto_refuses_an_endpoint_that_does_not_serve_the_configured_model(fake_local, isolated_home):
    with FakeOpenAIServer(models=["other-model"]) as srv:
        backend = build_backend(load_config(base_url=srv.base_url, model="m1"))
    assert backend.name == "none"
    assert "does not serve the configured model 'm1'" in backend.reason and "other-model" in backend.reason
    assert backend.reason.startswith("auto chose none:")
