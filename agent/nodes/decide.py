"""decide: the model's schema-valid answer (with P(anomalous) from log-probabilities); reflect on
"uncertain" at most `max_reflections` times."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from langchain_core.messages import HumanMessage
from pydantic import BaseModel, Field, field_validator

from agent.conversation import initial_messages, request_messages
from agent.nodes.model import budget_problem, unstreamed, usage_update
from agent.runtime import AgentRuntime
from agent.state import State


class ModelVerdict(BaseModel):
    """What the model must answer. `label` comes first so its token's probabilities are read early."""

    label: Literal["normal", "anomalous", "uncertain"]
    defect_type: str | None = None
    regions: list[list[float]] = Field(default_factory=list, description="boxes [x0, y0, x1, y1], original pixels")
    explanation: str = Field(min_length=1)

    @field_validator("regions")
    @classmethod
    def _boxes(cls, boxes: list[list[float]]) -> list[list[float]]:
        for box in boxes:
            if len(box) != 4:
                msg = f"each region must be [x0, y0, x1, y1], got {box}"
                raise ValueError(msg)
        return boxes


def _prepare(state: State, rt: AgentRuntime):
    res = rt.resources(state["run_id"])
    new = [] if state.get("messages") else initial_messages(state, rt, res)
    prompt = HumanMessage(rt.prompts.render("decide", category=state.get("category")))
    messages, drops = request_messages(rt, res, state, [*state.get("messages", []), *new, prompt])
    return new, messages, prompt, drops


def _answer(state: State, new: list, prompt: HumanMessage, result, start: float, drops: dict) -> dict:
    from agent.backends.logprobs import (
        PARTIAL_COVERAGE,
        anomaly_probability,
        label_coverage,
        label_mass,
    )

    parsed: ModelVerdict = result.parsed
    answer = parsed.model_dump(mode="json")
    mass = label_mass(result.message)
    # absolute P(label) at the label token, never renormalised over the labels (issue 22):
    # P(anomalous) = P(a) + 0.5 (1 - P(a) - P(n)); P(normal) is reported beside a disputed verdict
    answer["label_probs"] = mass
    answer["probability"] = anomaly_probability(mass) if mass else None
    answer["p_normal"] = mass["normal"] if mass else None
    answer["label_coverage"] = label_coverage(mass) if mass else None
    if mass is None:
        answer["score_source"], answer["weight_factor"] = "label", 1.0
    elif answer["label_coverage"] < PARTIAL_COVERAGE:
        # the label tokens carry under half the mass: a weak reading, at half the model's weight in fusion
        answer["score_source"], answer["weight_factor"] = "logprobs-partial", 0.5
    else:
        answer["score_source"], answer["weight_factor"] = "logprobs", 1.0
    answer["repaired"] = bool(result.repaired)
    update = {"messages": [*new, prompt, result.message], "model_answer": answer, **usage_update(state, result.message)}
    update.update(drops)
    update["model_calls"] += int(bool(result.repaired))
    prior = state.get("timings", {}).get("decide_ms", 0.0)
    update["timings"] = {"decide_ms": prior + (time.perf_counter() - start) * 1000.0}
    return update


def _invalid_answer(state: State, new: list, prompt: HumanMessage, exc: Exception, start: float, drops: dict) -> dict:
    """The model's verdict failed validation even after the repair turn: decide from the tools and say so."""
    return {
        **drops,
        "messages": [*new, prompt],
        "model_answer": None,
        "model_error": str(exc),
        "model_calls": state.get("model_calls", 0) + 2,
        "timings": {"decide_ms": (time.perf_counter() - start) * 1000.0},
    }


def decide(state: State, *, rt: AgentRuntime) -> dict:
    if rt.backend.model is None:
        return {}
    from agent.backends.errors import ModelOutputError
    from agent.backends.structured import invoke_structured

    start = time.perf_counter()
    new, messages, prompt, drops = _prepare(state, rt)
    try:
        result = invoke_structured(unstreamed(rt.backend.model), messages, ModelVerdict, max_repairs=1)
    except ModelOutputError as exc:
        return _invalid_answer(state, new, prompt, exc, start, drops)
    return _answer(state, new, prompt, result, start, drops)


async def adecide(state: State, *, rt: AgentRuntime) -> dict:
    if rt.backend.model is None:
        return {}
    from agent.backends import structured
    from agent.backends.errors import ModelOutputError

    start = time.perf_counter()
    new, messages, prompt, drops = _prepare(state, rt)
    try:
        if hasattr(structured, "ainvoke_structured"):
            result = await structured.ainvoke_structured(unstreamed(rt.backend.model), messages, ModelVerdict, max_repairs=1)
        else:
            result = await asyncio.to_thread(structured.invoke_structured, unstreamed(rt.backend.model), messages,
                                             ModelVerdict, max_repairs=1)
    except ModelOutputError as exc:
        return _invalid_answer(state, new, prompt, exc, start, drops)
    return _answer(state, new, prompt, result, start, drops)


def route_after_decide(state: State, *, rt: AgentRuntime) -> str:
    answer = state.get("model_answer") or {}
    if (
        answer.get("label") == "uncertain"
        and state.get("reflections", 0) < rt.config.max_reflections
        and not state.get("budget_exhausted")
        and budget_problem(state, rt) is None
    ):
        return "reflect"
    return "fuse"


def reflect(state: State, *, rt: AgentRuntime) -> dict:
    """Ask the model what evidence is missing and to call the tools that would settle it."""
    return {
        "messages": [HumanMessage(rt.prompts.render("reflect"))],
        "reflections": state.get("reflections", 0) + 1,
    }
