"""A chat model that replays a script of AI messages: for tests, demos and replaying saved traces.

Script sources:
- Python: a list of `AIMessage` or dicts (``{"content": ..., "tool_calls": [{"name", "args",
  "id"?}], "response_metadata": {...}, "logprobs": [...]?, "usage_metadata": {...}?}``).
- A JSON/YAML file holding such a list, or ``{"script": [...]}``.
- A saved agent trace: ``{"messages": [...]}`` serialised by `messages_to_dict`; its AI messages
  are replayed in order.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, messages_from_dict
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from agent.backends.errors import ScriptExhaustedError
from agent.errors import UserInputError


def _to_ai_message(item: AIMessage | dict | str, step: int) -> AIMessage:
    """One script step (a string is content only) as an `AIMessage`; tool calls without ids get ``call_<step>_<i>``."""
    if isinstance(item, AIMessage):
        msg = item
    elif isinstance(item, str):
        msg = AIMessage(content=item)
    elif isinstance(item, dict):
        if item.get("type") == "ai" and "data" in item:  # messages_to_dict form
            msg = messages_from_dict([item])[0]
        else:
            data = dict(item)
            unknown = set(data) - {
                "content", "tool_calls", "response_metadata", "logprobs", "usage_metadata", "id",
                "invalid_tool_calls", "type",
            }
            if unknown:
                msg = f"script step {step}: unknown key(s) {', '.join(sorted(unknown))}. Fix: use content, tool_calls, response_metadata, logprobs, usage_metadata"
                raise UserInputError(msg)
            data.pop("type", None)
            metadata = dict(data.pop("response_metadata", None) or {})
            logprobs = data.pop("logprobs", None)
            if logprobs is not None:
                metadata["logprobs"] = {"content": logprobs} if isinstance(logprobs, list) else logprobs
            calls = [
                {"name": c["name"], "args": c.get("args", {}), "id": c.get("id"), "type": "tool_call"}
                for c in data.pop("tool_calls", None) or []
            ]
            msg = AIMessage(
                content=data.pop("content", "") or "",
                tool_calls=calls,
                response_metadata=metadata,
                **{k: v for k, v in data.items() if v is not None},
            )
    else:
        msg = f"script step {step}: expected an AIMessage or a dict, got {type(item).__name__}"
        raise UserInputError(msg)
    if any(not c.get("id") for c in msg.tool_calls):
        calls = [
            {**c, "id": c.get("id") or f"call_{step}_{i}"} for i, c in enumerate(msg.tool_calls)
        ]
        msg = msg.model_copy(update={"tool_calls": calls})
    return msg


def load_script(path: str | Path) -> list[AIMessage]:
    """Read a script or a saved trace from a JSON or YAML file.

    Raises:
        UserInputError: missing file, bad syntax, or no AI messages in it.
    """
    p = Path(path)
    if not p.is_file():
        msg = f"script file {p} not found. Fix: check --script / ANOMALY_AGENT_SCRIPT"
        raise UserInputError(msg)
    text = p.read_text()
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        msg = f"script file {p} cannot be parsed ({exc}). Fix: write a JSON or YAML list of AI messages"
        raise UserInputError(msg) from None
    if isinstance(data, dict) and "messages" in data:  # a saved agent trace
        try:
            messages = messages_from_dict(data["messages"])
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"trace {p}: 'messages' is not a list of serialised LangChain messages ({exc})"
            raise UserInputError(msg) from None
        items: list = [m for m in messages if isinstance(m, AIMessage)]
    elif isinstance(data, dict) and "script" in data:
        items = data["script"]
    else:
        items = data
    if not isinstance(items, list) or not items:
        msg = f"script file {p} holds no AI messages. Fix: a list of steps, {{'script': [...]}} or a trace with 'messages'"
        raise UserInputError(msg)
    return [_to_ai_message(item, i) for i, item in enumerate(items)]


class _Cursor:
    """Replay position and recorded calls, shared by every binding of one model."""

    def __init__(self) -> None:
        self.index = 0
        self.calls: list[list[BaseMessage]] = []
        self.call_kwargs: list[dict[str, Any]] = []
        self.lock = threading.Lock()


class ScriptedChatModel(BaseChatModel):
    """Replays `script` one AI message per call, in order.

    Attributes:
        script: the AI messages to return.
        calls: the input messages of every call so far (for tests).
        call_kwargs: the keyword arguments of every call (``tools`` after `bind_tools`, ...).
        model_id: the name it reports (``llm_type`` and ``response_metadata["model_name"]``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    script: list[AIMessage] = Field(default_factory=list)
    model_id: str = "scripted"
    _cursor: _Cursor = PrivateAttr(default_factory=_Cursor)

    def __init__(self, script: Sequence[AIMessage | dict | str] = (), **kwargs: Any) -> None:
        steps = [_to_ai_message(item, i) for i, item in enumerate(script)]
        super().__init__(script=steps, **kwargs)

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> ScriptedChatModel:
        """A model replaying a JSON/YAML script or the AI messages of a saved trace."""
        return cls(load_script(path), model_id=kwargs.pop("model_id", f"scripted:{Path(path).name}"), **kwargs)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def calls(self) -> list[list[BaseMessage]]:
        return self._cursor.calls

    @property
    def call_kwargs(self) -> list[dict[str, Any]]:
        return self._cursor.call_kwargs

    @property
    def steps_used(self) -> int:
        return self._cursor.index

    @property
    def has_logprobs(self) -> bool:
        """True when any step carries logprobs (so scoring paths can be tested)."""
        return any("logprobs" in m.response_metadata for m in self.script)

    def reset(self) -> None:
        """Rewind to the first step and forget recorded calls."""
        with self._cursor.lock:
            self._cursor.index = 0
            self._cursor.calls.clear()
            self._cursor.call_kwargs.clear()

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Record the tools' OpenAI schemas with each call; the binding shares this model's cursor."""
        schemas = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=schemas, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        cursor = self._cursor
        with cursor.lock:
            cursor.calls.append(list(messages))
            cursor.call_kwargs.append(dict(kwargs))
            if cursor.index >= len(self.script):
                last = messages[-1] if messages else None
                got = f"; the last input was a {last.type} message" if last is not None else ""
                msg = (
                    f"scripted model exhausted: the script has {len(self.script)} step(s) and call "
                    f"{cursor.index + 1} asked for another{got}. Fix: add steps to the script or "
                    "lower the agent's budget (max_model_calls)"
                )
                raise ScriptExhaustedError(msg)
            step_no = cursor.index
            step = self.script[step_no]
            cursor.index += 1
        metadata = {"model_name": self.model_id, "step": step_no, **step.response_metadata}
        message = step.model_copy(update={"response_metadata": metadata}, deep=True)
        return ChatResult(generations=[ChatGeneration(message=message)])
