"""survey: run the cheap quantitative tools once, before the model speaks."""

from __future__ import annotations

import time

from agent.runtime import AgentRuntime, mode_note, require_references_or_model
from agent.state import State


def survey(state: State, *, rt: AgentRuntime) -> dict:
    """patch_knn with references, CLIP zero-shot otherwise. Their evidence is the model's first reading."""
    start = time.perf_counter()
    res = rt.resources(state["run_id"])
    n_refs = len(res.ctx.reference_ids)
    memory_normals = sum(1 for e in state.get("memory_examples") or [] if e["example"].get("label") == "normal")
    require_references_or_model(rt, n_refs, memory_normals, state.get("category"))
    mode = mode_note(res.images, state["query_id"], res.ctx.reference_ids) if n_refs else None
    note = " ".join(n[0].upper() + n[1:] for n in [*res.notes, *([mode] if mode else [])]) or None
    evidence = []
    for name in rt.survey_tools(n_refs):
        ev = rt.run_tool(name, {"image_id": state["query_id"]}, res)
        if note and ev.score is not None:  # the first scoring evidence carries it into the explanation
            ev.summary = f"{ev.summary} {note}".strip()
            note = None
        evidence.append(ev.model_dump(mode="json"))
    return {
        "evidence": evidence,
        "tool_calls": state.get("tool_calls", 0) + len(evidence),
        "timings": {"survey_ms": (time.perf_counter() - start) * 1000.0},
    }
