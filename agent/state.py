"""Graph state (LangGraph's react-agent template: a narrow `InputState`, a full `State`).

Everything in the state is JSON-able so a chat session can be checkpointed (SqliteSaver). Pixels and
tool caches live in the run's `RunResources` (agent/runtime.py), found by `run_id`.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict


def merge_dicts(left: dict | None, right: dict | None) -> dict:
    return {**(left or {}), **(right or {})}


class InputState(TypedDict, total=False):
    """What a caller provides (`run_id` keys the run's resources; the API sets it)."""

    run_id: str
    image: str
    category: str | None
    references: list[str] | str | None
    question: str | None


class State(InputState, total=False):
    """The full state of one query (or one chat session)."""

    messages: Annotated[list[AnyMessage], add_messages]
    query_id: str
    reference_ids: list[str]
    reference_paths: list[str]
    evidence: Annotated[list[dict[str, Any]], operator.add]  # Evidence.model_dump() items
    memory_examples: list[dict[str, Any]]  # {"example": MemoryExample dump, "similarity": float}
    notes: str
    model_calls: int
    tool_calls: int
    prompt_tokens: int
    completion_tokens: int
    reflections: int
    model_answer: dict[str, Any] | None  # label, defect_type, regions, explanation,
    # probability (P(a) + 0.5 P(u) from logprobs), p_normal, label_probs, repaired
    model_error: str | None  # the model's verdict failed validation after the repair turn
    budget_exhausted: str | None  # the reason, when the loop stopped on its budget
    image_drops: Annotated[list[dict[str, Any]], operator.add]  # {"model_call", "dropped": [labels]} per request
    verdict: dict[str, Any] | None
    timings: Annotated[dict[str, float], merge_dicts]
    # chat sessions: "detect" until the verdict exists, then "chat"; budgets count from the turn's start
    phase: str
    turn_model_calls: int
    turn_tool_calls: int
    answer: str | None
