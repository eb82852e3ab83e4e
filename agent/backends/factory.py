"""Build the agent's chat model from `AgentConfig`: ``auto``, ``openai``, ``transformers``,
``scripted`` or ``none``.

``auto`` picks, in order: the configured OpenAI-compatible endpoint if it answers ``GET /models``
and serves the configured ``model``; the in-process model if its weights resolve locally; otherwise
``none`` (tools and fusion only). `Backend.reason` says which and why, in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.config import AgentConfig
from agent.errors import UserInputError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage

BACKEND_NAMES = ("auto", "openai", "transformers", "scripted", "none")
AUTO_PROBE_TIMEOUT_S = 3.0


@dataclass
class Backend:
    """The chosen model.

    Attributes:
        name: "openai", "transformers", "scripted" or "none" (never "auto").
        model: the chat model, None for "none".
        model_id: the served / loaded model's id, None for "none".
        reason: one line, which backend and why (e.g. "auto chose openai: http://x/v1 answered; serves: ...").
        supports_logprobs: True when the verdict's P(label) can come from token log-probabilities.
    """

    name: str
    model: BaseChatModel | None
    model_id: str | None
    reason: str
    supports_logprobs: bool


def _openai(config: AgentConfig, reason: str) -> Backend:
    from agent.backends.openai_backend import build_openai_model

    model = build_openai_model(config)
    return Backend("openai", model, config.model, reason, supports_logprobs=True)


def _transformers(config: AgentConfig, reason: str) -> Backend:
    from agent.backends.transformers_backend import TransformersChatModel

    model = TransformersChatModel.from_config(config, max_new_tokens=config.max_new_tokens)
    return Backend("transformers", model, config.local_model, reason, supports_logprobs=True)


def _scripted(config: AgentConfig, script: Sequence[AIMessage | dict] | None) -> Backend:
    from agent.backends.scripted import ScriptedChatModel

    if script is not None:
        model = ScriptedChatModel(script)
        reason = f"scripted: {len(model.script)} step(s) given in code"
    elif config.script is not None:
        model = ScriptedChatModel.from_file(config.script)
        reason = f"scripted: {len(model.script)} step(s) from {config.script}"
    else:
        msg = "backend 'scripted' needs a script. Fix: set --script / ANOMALY_AGENT_SCRIPT to a JSON/YAML script or a saved trace"
        raise UserInputError(msg)
    return Backend("scripted", model, model.model_id, reason, supports_logprobs=model.has_logprobs)


def _local_status(config: AgentConfig) -> tuple[bool, str]:
    try:
        from agent.backends.transformers_backend import local_model_status
    except ImportError as exc:
        return False, f"in-process backend unavailable ({exc})"
    return local_model_status(config)


def _auto(config: AgentConfig) -> Backend:
    from agent.backends.endpoint import probe_endpoint

    notes = []
    if config.base_url:
        models, detail = probe_endpoint(
            config.base_url, config.api_key, timeout=min(AUTO_PROBE_TIMEOUT_S, config.request_timeout_s)
        )
        if models is not None and config.model in models:
            return _openai(config, f"auto chose openai: {detail}")
        if models is not None:
            notes.append(f"{', '.join(config.base_urls)} does not serve the configured model {config.model!r} "
                         f"(it serves: {', '.join(models[:5]) or 'nothing'}; set --model / ANOMALY_AGENT_MODEL)")
        else:
            notes.append(detail.split(". Fix:")[0])
    else:
        notes.append("no endpoint configured")
    ok, detail = _local_status(config)
    if ok:
        return _transformers(config, f"auto chose transformers: {notes[0]}; local model {config.local_model}: {detail}")
    cause = detail.split(". Fix")[0].split(". ")[0][:160]  # the cause only; `doctor` shows the fix in full
    notes.append(cause if cause.startswith("local model") else f"local model {config.local_model}: {cause}")
    reason = (  # one short line per run; `doctor` gives the download instructions
        f"auto chose none: no model ({'; '.join(notes)}); running tools and fusion only. Fix: see `anomaly-agent doctor`"
    )
    return Backend("none", None, None, reason, supports_logprobs=False)


def build_backend(config: AgentConfig, script: Sequence[AIMessage | dict] | None = None) -> Backend:
    """The backend named by ``config.backend``.

    Args:
        config: the effective configuration.
        script: AI messages (or dicts) for the scripted backend; overrides ``config.script``.
            Passing a script with ``backend="auto"`` selects the scripted backend.

    Raises:
        UserInputError: unknown backend name (the valid ones are listed), or missing settings.
    """
    name = str(config.backend)
    if name not in BACKEND_NAMES:
        msg = f"unknown backend {name!r}. Fix: use one of {', '.join(BACKEND_NAMES)}"
        raise UserInputError(msg)
    if name == "openai":
        return _openai(config, f"openai: configured endpoint {', '.join(config.base_urls)}")
    if name == "transformers":
        return _transformers(config, f"transformers: in-process {config.local_model}")
    if name == "scripted" or (name == "auto" and script is not None):
        return _scripted(config, script)
    if name == "none":
        return Backend("none", None, None, "none: configured (tools and fusion only)", supports_logprobs=False)
    return _auto(config)
