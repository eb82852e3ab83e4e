"""Wire the nodes into the LangGraph graph. Nodes live in `agent/nodes/`; this module only wires.

    START -> intake -> retrieve_memory -> survey -> model <-> tools
                                            |          |
                                            |          v
                                            |        decide -> reflect -> model (on "uncertain", bounded)
                                            v          |
                                           fuse <------+  -> END

Without a model (`--backend none`) survey goes straight to fuse.
"""

from __future__ import annotations

from functools import partial

from langchain_core.runnables import RunnableLambda
from langgraph.graph import END, START, StateGraph

from agent.nodes.chat import answer, begin_turn, restore, route_start, route_turn
from agent.nodes.decide import adecide, decide, reflect, route_after_decide
from agent.nodes.fuse import fuse
from agent.nodes.intake import intake
from agent.nodes.memory import retrieve_memory
from agent.nodes.model import amodel_turn, model_turn, route_after_model
from agent.nodes.survey import survey
from agent.nodes.tools import run_tools
from agent.runtime import AgentRuntime
from agent.state import InputState, State


def _after_tools(state: State) -> str:
    if state.get("budget_exhausted"):
        return "answer" if state.get("phase") == "chat" else "decide"
    return "model"


def _add_detection_nodes(graph: StateGraph, rt: AgentRuntime) -> None:
    graph.add_node("intake", partial(intake, rt=rt))
    graph.add_node("retrieve_memory", partial(retrieve_memory, rt=rt))
    graph.add_node("survey", partial(survey, rt=rt))
    graph.add_node("model", RunnableLambda(partial(model_turn, rt=rt), afunc=partial(amodel_turn, rt=rt), name="model"))
    graph.add_node("tools", partial(run_tools, rt=rt))
    graph.add_node("decide", RunnableLambda(partial(decide, rt=rt), afunc=partial(adecide, rt=rt), name="decide"))
    graph.add_node("reflect", partial(reflect, rt=rt))
    graph.add_node("fuse", partial(fuse, rt=rt))
    graph.add_edge("intake", "retrieve_memory")
    graph.add_edge("retrieve_memory", "survey")
    graph.add_edge("survey", "model" if rt.backend.model is not None else "fuse")
    graph.add_conditional_edges("decide", partial(route_after_decide, rt=rt), ["reflect", "fuse"])
    graph.add_edge("reflect", "model")


def build_graph(rt: AgentRuntime, checkpointer=None):
    """The compiled detection graph over `rt` (sync `invoke` and async `ainvoke` both work)."""
    graph = StateGraph(State, input_schema=InputState)
    _add_detection_nodes(graph, rt)
    graph.add_edge(START, "intake")
    graph.add_conditional_edges("model", route_after_model, ["tools", "decide"])
    graph.add_conditional_edges("tools", _after_tools, ["model", "decide"])
    graph.add_edge("fuse", END)
    return graph.compile(checkpointer=checkpointer, name="anomaly-agent")


def build_chat_graph(rt: AgentRuntime, checkpointer):
    """The chat graph: the first turn detects (as `build_graph`), then every turn answers a question.

    A session is a LangGraph thread (`thread_id`), persisted by `checkpointer` (SqliteSaver).
    """
    graph = StateGraph(State, input_schema=InputState)
    _add_detection_nodes(graph, rt)
    graph.add_node("restore", partial(restore, rt=rt))
    graph.add_node("begin_turn", partial(begin_turn, rt=rt))
    graph.add_node("answer", partial(answer, rt=rt))
    graph.add_conditional_edges(START, route_start, ["intake", "restore"])
    graph.add_conditional_edges("model", route_after_model, ["tools", "decide", "answer"])
    graph.add_conditional_edges("tools", _after_tools, ["model", "decide", "answer"])
    graph.add_edge("fuse", "begin_turn")
    graph.add_edge("restore", "begin_turn")
    graph.add_conditional_edges("begin_turn", partial(route_turn, rt=rt), ["model", "answer"])
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer, name="anomaly-agent-chat")


def recursion_limit(rt: AgentRuntime) -> int:
    """Enough graph steps for the budget: each model call can add a tools step, plus fixed nodes."""
    return 3 * (rt.config.max_model_calls + rt.config.max_reflections) + 20
