"""tools: run the model's tool calls with LangGraph's `ToolNode`; errors go back as tool messages."""

from __future__ import annotations

import time

from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.prebuilt import ToolNode
from langgraph.prebuilt.tool_node import ToolInvocationError

from agent.conversation import image_turn
from agent.nodes.model import budget_message
from agent.runtime import AgentRuntime
from agent.state import State
from agent.tooling import run_tool_for
from tools.base import ToolError


def run_tools(state: State, config: RunnableConfig, *, rt: AgentRuntime) -> dict:
    """Answer every tool call of the last model turn.

    - Valid calls run through `ToolNode` (a `ToolError` or invalid arguments become an error message the
      model can act on; an unknown tool name gets the list of valid ones).
    - Malformed calls (`invalid_tool_calls`: arguments that are not JSON) get an error message.
    - Calls beyond the tool budget are answered "not run" and the loop goes to decide.
    """
    start = time.perf_counter()
    res = rt.resources(state["run_id"])
    last: AIMessage = state["messages"][-1]
    used = state.get("tool_calls", 0) - (state.get("turn_tool_calls", 0) if state.get("phase") == "chat" else 0)
    remaining = max(0, rt.config.max_tool_calls - used)
    allowed, refused = last.tool_calls[:remaining], last.tool_calls[remaining:]
    messages: list = []
    if allowed:
        names = rt.available_tools(len(res.ctx.reference_ids))
        node = ToolNode([run_tool_for(rt, res, n) for n in names],
                        handle_tool_errors=(ToolError, ToolInvocationError))
        request = AIMessage(content=last.content, tool_calls=allowed, id=last.id)
        messages.extend(node.invoke({"messages": [request]}, config)["messages"])
    for bad in last.invalid_tool_calls:
        text = (f"Error: the call to {bad.get('name')!r} could not be parsed ({bad.get('error') or 'arguments are not valid JSON'}). "
                "Send the arguments as a JSON object matching the tool's schema.")
        messages.append(ToolMessage(text, tool_call_id=bad.get("id") or "invalid", name=bad.get("name") or "unknown", status="error"))
    budget = None
    if refused:
        budget = f"{rt.config.max_tool_calls} tool calls"
        for call in refused:
            messages.append(ToolMessage(f"Not run: the tool budget ({budget}) is used up.",
                                        tool_call_id=call["id"], name=call["name"], status="error"))
    evidence = [m.artifact for m in messages if isinstance(m, ToolMessage) and isinstance(m.artifact, dict)]
    for ev in evidence:
        if ev.get("image_ids"):
            messages.append(image_turn(rt, res, ev["tool"], ev["image_ids"]))
    if budget:
        messages.append(budget_message(rt, budget))
    update = {
        "messages": messages,
        "evidence": evidence,
        "tool_calls": state.get("tool_calls", 0) + len(allowed),
        "timings": {"tools_ms": state.get("timings", {}).get("tools_ms", 0.0) + (time.perf_counter() - start) * 1000.0},
    }
    if budget:
        update["budget_exhausted"] = budget
    return update
