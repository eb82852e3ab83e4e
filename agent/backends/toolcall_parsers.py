"""Parsers that turn a model's raw generated text into LangChain tool calls.

Each model family writes tool calls in the format of its chat template. A parser takes the decoded
text and returns the remaining content, the valid calls (``{"name", "args", "id", "type":
"tool_call"}``) and the invalid ones (``{"name", "args": raw text, "id", "error", "type":
"invalid_tool_call"}``): a malformed call becomes an `invalid_tool_calls` entry, never an exception,
so the agent can tell the model what went wrong.

Registry: `PARSERS` (parser name -> class) and `FAMILY_PARSERS` (HF ``config.model_type`` -> parser
name). Families not listed use ``hermes`` (Qwen's format). Add a format with `register_parser`.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class ParsedOutput:
    """The split of one generation.

    Attributes:
        content: the text left once tool-call blocks are removed (stripped).
        tool_calls: valid calls, LangChain ``ToolCall`` dicts.
        invalid_tool_calls: malformed calls, LangChain ``InvalidToolCall`` dicts.
    """

    content: str
    tool_calls: list[dict] = field(default_factory=list)
    invalid_tool_calls: list[dict] = field(default_factory=list)


def new_call_id() -> str:
    """A fresh tool-call id in OpenAI's style (``call_`` + 24 hex chars)."""
    return f"call_{uuid.uuid4().hex[:24]}"


_NAME_RE = re.compile(r'"name"\s*:\s*"([^"]+)"')


def _invalid(raw: str, error: str, name: str | None = None) -> dict:
    match = _NAME_RE.search(raw)
    return {
        "type": "invalid_tool_call",
        "name": name or (match.group(1) if match else None),
        "args": raw,
        "id": new_call_id(),
        "error": error,
    }


def call_from_object(obj: Any, raw: str) -> dict:
    """A ToolCall (or InvalidToolCall) dict from a decoded ``{"name", "arguments"}`` object.

    ``arguments`` may be an object or a JSON string holding one; ``parameters`` is accepted as an
    alias (some fine-tunes write it).
    """
    if not isinstance(obj, dict):
        return _invalid(raw, f"tool call must be a JSON object, got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return _invalid(raw, 'tool call has no "name" string')
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            return _invalid(raw, f"arguments of {name!r} are not valid JSON: {exc}", name)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return _invalid(raw, f"arguments of {name!r} must be a JSON object, got {type(args).__name__}", name)
    return {"type": "tool_call", "name": name, "args": args, "id": new_call_id()}


def _add(result: ParsedOutput, call: dict) -> None:
    (result.tool_calls if call["type"] == "tool_call" else result.invalid_tool_calls).append(call)


class ToolCallParser:
    """Base class: `parse` splits text into content and calls; `forced_prefix` opens a call.

    Subclasses set `name` and `markers` (strings whose presence means a call may be there).
    """

    name: ClassVar[str] = ""
    markers: ClassVar[tuple[str, ...]] = ()

    def parse(self, text: str) -> ParsedOutput:
        raise NotImplementedError

    def forced_prefix(self, tool_name: str | None = None) -> str:
        """Text appended after the generation prompt so the model must call a tool.

        Args:
            tool_name: the tool that must be called, or None for "any tool".
        """
        raise NotImplementedError


class HermesToolCallParser(ToolCallParser):
    """Qwen / Hermes format: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.

    Several blocks may follow each other. A final block cut off before ``</tool_call>`` (token
    budget reached) is still parsed when its JSON is complete.
    """

    name = "hermes"
    markers = ("<tool_call>",)
    _BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)

    def parse(self, text: str) -> ParsedOutput:
        if "<tool_call>" not in text:
            return ParsedOutput(content=text.strip())
        result = ParsedOutput(content="")
        for match in self._BLOCK.finditer(text):
            raw = match.group(1).strip()
            closed = match.group(0).endswith("</tool_call>")
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                reason = "" if closed else " (block not closed with </tool_call>)"
                _add(result, _invalid(raw, f"tool call is not valid JSON{reason}: {exc}"))
                continue
            _add(result, call_from_object(obj, raw))
        result.content = self._BLOCK.sub("", text).strip()
        return result

    def forced_prefix(self, tool_name: str | None = None) -> str:
        if tool_name is None:
            return "<tool_call>\n"
        return '<tool_call>\n{"name": ' + json.dumps(tool_name) + ', "arguments": '


class MistralToolCallParser(ToolCallParser):
    """Mistral format: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` (JSON list), or the
    newer ``[TOOL_CALLS]name[ARGS]{...}`` per call."""

    name = "mistral"
    markers = ("[TOOL_CALLS]",)
    _NEW_STYLE = re.compile(r"\[TOOL_CALLS\]\s*([^\[\]\s{]+)\s*\[ARGS\]\s*")

    def parse(self, text: str) -> ParsedOutput:
        head, sep, tail = text.partition("[TOOL_CALLS]")
        if not sep:
            return ParsedOutput(content=text.strip())
        result = ParsedOutput(content=head.strip())
        if self._NEW_STYLE.search(text):
            parts = self._NEW_STYLE.split(text)  # [head, name1, args1, name2, args2, ...]
            for name, raw in zip(parts[1::2], parts[2::2], strict=True):
                raw = raw.strip()
                try:
                    obj = {"name": name, "arguments": json.loads(raw)}
                except json.JSONDecodeError as exc:
                    _add(result, _invalid(raw, f"arguments of {name!r} are not valid JSON: {exc}", name))
                    continue
                _add(result, call_from_object(obj, raw))
            return result
        raw = tail.replace("[TOOL_CALLS]", "").strip()
        try:
            decoded, end = json.JSONDecoder().raw_decode(raw)
        except json.JSONDecodeError as exc:
            _add(result, _invalid(raw, f"tool call list is not valid JSON: {exc}"))
            return result
        for obj in decoded if isinstance(decoded, list) else [decoded]:
            _add(result, call_from_object(obj, json.dumps(obj)))
        rest = raw[end:].strip()
        result.content = "\n".join(p for p in (result.content, rest) if p)
        return result

    def forced_prefix(self, tool_name: str | None = None) -> str:
        if tool_name is None:
            return "[TOOL_CALLS]["
        return '[TOOL_CALLS][{"name": ' + json.dumps(tool_name) + ', "arguments": '


PARSERS: dict[str, type[ToolCallParser]] = {
    "hermes": HermesToolCallParser,
    "qwen": HermesToolCallParser,
    "mistral": MistralToolCallParser,
}

# HF `config.model_type` -> parser name. Families not listed fall back to DEFAULT_PARSER.
FAMILY_PARSERS: dict[str, str] = {
    "qwen2_vl": "hermes",
    "qwen2_5_vl": "hermes",
    "qwen3_vl": "hermes",
    "qwen3_vl_moe": "hermes",
    "mistral3": "mistral",
    "pixtral": "mistral",
}
DEFAULT_PARSER = "hermes"


def register_parser(name: str, parser: type[ToolCallParser], model_types: tuple[str, ...] = ()) -> None:
    """Add a parser under `name`, and make it the parser of the given HF model types."""
    PARSERS[name] = parser
    for model_type in model_types:
        FAMILY_PARSERS[model_type] = name


def get_parser(name: str) -> ToolCallParser:
    """The parser registered as `name`; an unknown name raises ValueError listing the valid ones."""
    if name not in PARSERS:
        msg = f"unknown tool-call parser {name!r}; valid: {', '.join(sorted(PARSERS))}"
        raise ValueError(msg)
    return PARSERS[name]()


def parser_for_model_type(model_type: str | None) -> ToolCallParser:
    """The parser for a HF ``config.model_type`` (``hermes`` when the family is not listed)."""
    return get_parser(FAMILY_PARSERS.get(model_type or "", DEFAULT_PARSER))


__all__ = [
    "DEFAULT_PARSER",
    "FAMILY_PARSERS",
    "PARSERS",
    "HermesToolCallParser",
    "MistralToolCallParser",
    "ParsedOutput",
    "ToolCallParser",
    "call_from_object",
    "get_parser",
    "new_call_id",
    "parser_for_model_type",
    "register_parser",
]
