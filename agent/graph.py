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
    return "decide" if state.get("budget_exhausted") else "model"


def build_graph(rt: AgentRuntime, checkpointer=None):
    """The compiled detection graph over `rt` (sync `invoke` and async `ainvoke` both work)."""
    graph = StateGraph(State, input_schema=InputState)
    graph.add_node("intake", partial(intake, rt=rt))
    graph.add_node("retrieve_memory", partial(retrieve_memory, rt=rt))
    graph.add_node("survey", partial(survey, rt=rt))
    graph.add_node("model", RunnableLambda(partial(model_turn, rt=rt), afunc=partial(amodel_turn, rt=rt), name="model"))
    graph.add_node("tools", partial(run_tools, rt=rt))
    graph.add_node("decide", RunnableLambda(partial(decide, rt=rt), afunc=partial(adecide, rt=rt), name="decide"))
    graph.add_node("reflect", partial(reflect, rt=rt))
    graph.add_node("fuse", partial(fuse, rt=rt))

    graph.add_edge(START, "intake")
    graph.add_edge("intake", "retrieve_memory")
    graph.add_edge("retrieve_memory", "survey")
    graph.add_edge("survey", "model" if rt.backend.model is not None else "fuse")
    graph.add_conditional_edges("model", route_after_model, ["tools", "decide"])
    graph.add_conditional_edges("tools", _after_tools, ["model", "decide"])
    graph.add_conditional_edges("decide", partial(route_after_decide, rt=rt), ["reflect", "fuse"])
    graph.add_edge("reflect", "model")
    graph.add_edge("fuse", END)
    return graph.compile(checkpointer=checkpointer, name="anomaly-agent")


def recursion_limit(rt: AgentRuntime) -> int:
    """Enough graph steps for the budget: each model call can add a tools step, plus fixed nodes."""
    return 3 * (rt.config.max_model_calls + rt.config.max_reflections) + 20
