"""Chat turns over one image: the first turn detects, every turn then answers the user's question,
reusing the evidence already gathered (and calling more tools when the question needs them)."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage

from agent.runtime import AgentRuntime
from agent.state import State


def route_start(state: State) -> str:
    """A session with a verdict resumes; a new one detects first."""
    return "restore" if state.get("verdict") else "intake"


def restore(state: State, *, rt: AgentRuntime) -> dict:
    """Rebuild the run's images when the session resumes in a new process (crops made by tools in an
    earlier process are gone; their evidence text remains in the history)."""
    run_id = state["run_id"]
    if run_id in rt.runs:
        return {}
    res = rt.new_run(run_id)
    res.ctx.category = state.get("category")
    res.ctx.query_id = res.images.add_file(state["image"], image_id="query")
    for path in state.get("reference_paths") or []:
        res.ctx.reference_ids.append(res.images.add_file(path, prefix="ref"))
    return {}


def begin_turn(state: State, *, rt: AgentRuntime) -> dict:
    """Start a chat turn: the measured verdict and the user's question as a new human message."""
    verdict = state.get("verdict") or {}
    text = rt.prompts.render(
        "chat",
        label=verdict.get("pred_label"),
        score=verdict.get("pred_score"),
        question=state.get("question") or "Explain the verdict.",
    )
    return {
        "messages": [HumanMessage(text)],
        "phase": "chat",
        "turn_model_calls": state.get("model_calls", 0),
        "turn_tool_calls": state.get("tool_calls", 0),
        "budget_exhausted": None,
        "answer": None,
    }


def route_turn(state: State, *, rt: AgentRuntime) -> str:
    return "model" if rt.backend.model is not None else "answer"


def answer(state: State, *, rt: AgentRuntime) -> dict:
    """The turn's reply: the model's last words; without a model, what the measurements answer
    (`agent.offline_chat`: zoom, where, how sure, why)."""
    last = state["messages"][-1] if state.get("messages") else None
    if rt.backend.model is not None and isinstance(last, AIMessage) and last.text.strip():
        return {"answer": last.text.strip()}
    verdict = state.get("verdict") or {}
    if rt.backend.model is None:  # what the measurements can answer (zoom runs the zoom tool)
        from agent.offline_chat import offline_answer

        text, evidence = offline_answer(state.get("question") or "explain", verdict, rt,
                                        rt.resources(state["run_id"]), state["query_id"])
        if evidence is None:
            return {"answer": text.strip()}
        return {"answer": text.strip(), "evidence": [evidence], "tool_calls": state.get("tool_calls", 0) + 1}
    text = verdict.get("explanation", "")
    if state.get("budget_exhausted"):
        text = f"The turn stopped on its budget ({state['budget_exhausted']}). {text}"
    return {"answer": text.strip()}
