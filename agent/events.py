"""The agent's steps as small JSON events (for streaming: the server's SSE, progress displays).

`step_events(node, update)` turns one LangGraph node update (``stream_mode="updates"``) into events:

- ``{"type": "step", "node": "intake", "references": 4}``
- ``{"type": "tool", "tool": "patch_knn", "score": 0.81, "summary": "...", "elapsed_ms": 12.0}``
- ``{"type": "model_turn", "text": "...", "tool_calls": [{"name": "zoom", "args": {...}}]}``
- ``{"type": "reflect"}``, ``{"type": "answer", "text": "..."}`` (chat turns)

`answer_token(message, metadata)` turns one piece of LangGraph's ``stream_mode="messages"`` into an
``answer_token`` event (a chat turn's model writing its answer).

`AnomalyAgent.astream_detect` adds ``{"type": "survey_started", "tools": [...]}`` after memory retrieval
and the verdict once the run is finished (with its timings).
"""

from __future__ import annotations

from typing import Any


def _tool_event(ev: dict) -> dict:
    return {"type": "tool", "tool": ev.get("tool"), "args": ev.get("args") or {}, "score": ev.get("score"),
            "summary": ev.get("summary") or "", "elapsed_ms": ev.get("elapsed_ms")}


def _text(message: Any) -> str:
    content = getattr(message, "content", "")
    if isinstance(content, str):
        return content
    parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return "".join(parts)


def step_events(node: str, update: Any) -> list[dict]:
    """Events for one node's state update (see the module docstring); [] for nodes with nothing to say."""
    update = update or {}
    if not isinstance(update, dict):
        return []
    if node == "intake":
        return [{"type": "step", "node": "intake", "references": len(update.get("reference_ids") or [])}]
    if node == "retrieve_memory":
        examples = update.get("memory_examples") or []
        return [{"type": "step", "node": "memory", "examples": len(examples),
                 "references": len(update.get("reference_ids") or [])}]
    if node in ("survey", "tools"):
        return [_tool_event(ev) for ev in update.get("evidence") or []]
    if node in ("model", "decide"):
        events = []
        for message in update.get("messages") or []:
            if getattr(message, "type", "") != "ai":
                continue
            calls = [{"name": c["name"], "args": c.get("args", {})} for c in getattr(message, "tool_calls", []) or []]
            events.append({"type": "model_turn", "node": node, "text": _text(message), "tool_calls": calls})
        return events
    if node == "reflect":
        return [{"type": "reflect"}]
    if node == "answer" and update.get("answer"):
        return [{"type": "answer", "text": update["answer"]}]
    return []


def answer_token(message: Any, metadata: dict) -> dict | None:
    """An ``answer_token`` event for one streamed piece of a chat turn's model call (LangGraph's "messages"
    stream), or None for pieces of other nodes and for non-streamed messages.

    ``{"type": "answer_token", "text": str, "call": the call's message id, "tool_call": bool}``: `tool_call` is
    True when the piece carries part of a tool call (that call is not the answer).
    """
    from langchain_core.messages import AIMessageChunk

    if metadata.get("langgraph_node") != "model" or not isinstance(message, AIMessageChunk):
        return None
    text = _text(message)
    calling = bool(message.tool_call_chunks)
    if not text and not calling:
        return None
    return {"type": "answer_token", "text": text, "call": message.id or "", "tool_call": calling}
