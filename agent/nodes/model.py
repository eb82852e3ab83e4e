"""model: one turn of the MLLM with the tools bound; `route_after_model` picks the next node."""

from __future__ import annotations

import time

from langchain_core.messages import AIMessage, HumanMessage

from agent.conversation import initial_messages, request_messages
from agent.runtime import AgentRuntime
from agent.state import State
from agent.tooling import schema_tool


def budget_problem(state: State, rt: AgentRuntime) -> str | None:
    """Why the loop must stop now (model calls, wall time), or None.

    While detecting, one model call is kept for decide; in a chat turn the budget counts from the turn's start.
    """
    cfg = rt.config
    chatting = state.get("phase") == "chat"
    used = state.get("model_calls", 0) - (state.get("turn_model_calls", 0) if chatting else 0)
    if used + (0 if chatting else 1) >= cfg.max_model_calls:
        return f"{cfg.max_model_calls} model calls"
    res = rt.resources(state["run_id"])
    if not chatting and time.monotonic() - res.started > cfg.max_wall_s:
        return f"{cfg.max_wall_s:g} s wall time"
    return None


def usage_update(state: State, message: AIMessage) -> dict:
    usage = message.usage_metadata or {}
    return {
        "model_calls": state.get("model_calls", 0) + 1,
        "prompt_tokens": state.get("prompt_tokens", 0) + int(usage.get("input_tokens", 0) or 0),
        "completion_tokens": state.get("completion_tokens", 0) + int(usage.get("output_tokens", 0) or 0),
    }


def unstreamed(model):
    """`model`, never streamed over HTTP, also while a chat streams its answer (LangGraph's "messages" stream
    makes a chat model stream): the detection's turns and the scored verdict are read from one whole
    response (logprobs, JSON, tool calls, token counts), as the vLLM fidelity tests check."""
    from langchain_core.language_models import BaseChatModel

    if not isinstance(model, BaseChatModel) or model.disable_streaming is True:
        return model
    return model.model_copy(update={"disable_streaming": True})


def _prepare(state: State, rt: AgentRuntime):
    """(new messages to add, the message list to send (within the image budget), the bound model, the
    state update recording replaced images) or a stop update."""
    res = rt.resources(state["run_id"])
    new = [] if state.get("messages") else initial_messages(state, rt, res)
    problem = budget_problem(state, rt)
    if problem:
        return None, {"messages": new, "budget_exhausted": problem}
    messages, drops = request_messages(rt, res, state, list(state.get("messages", [])) + new)
    tools = [schema_tool(name) for name in rt.available_tools(len(res.ctx.reference_ids))]
    model = rt.backend.model if state.get("phase") == "chat" else unstreamed(rt.backend.model)  # a chat answer streams
    model = model.bind_tools(tools) if tools else model
    return (new, messages, model, drops), None


def _finish(state: State, new: list, reply: AIMessage, start: float, drops: dict) -> dict:
    from agent.backends.openai_backend import tool_calls_from_text

    reply = tool_calls_from_text(reply)  # Hermes text a server returned as content (issue 22)
    update = {"messages": [*new, reply], **usage_update(state, reply), **drops}
    update["timings"] = {"model_ms": state.get("timings", {}).get("model_ms", 0.0) + (time.perf_counter() - start) * 1000.0}
    return update


def model_turn(state: State, *, rt: AgentRuntime) -> dict:
    start = time.perf_counter()
    prepared, stop = _prepare(state, rt)
    if stop is not None:
        return stop
    new, messages, model, drops = prepared
    return _finish(state, new, model.invoke(messages), start, drops)


async def amodel_turn(state: State, *, rt: AgentRuntime) -> dict:
    start = time.perf_counter()
    prepared, stop = _prepare(state, rt)
    if stop is not None:
        return stop
    new, messages, model, drops = prepared
    return _finish(state, new, await model.ainvoke(messages), start, drops)


def route_after_model(state: State) -> str:
    """tools when the last model turn asked for tools (valid or not) and the budget allows; else decide
    (while detecting) or answer (in a chat turn)."""
    done = "answer" if state.get("phase") == "chat" else "decide"
    if state.get("budget_exhausted"):
        return done
    last = state["messages"][-1] if state.get("messages") else None
    if isinstance(last, AIMessage) and (last.tool_calls or last.invalid_tool_calls):
        return "tools"
    return done


def budget_message(rt: AgentRuntime, reason: str) -> HumanMessage:
    return HumanMessage(rt.prompts.render("budget", reason=reason))
