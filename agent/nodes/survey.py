"""survey: run the cheap quantitative tools once, before the model speaks, and fuse their readings."""

from __future__ import annotations

import time

from agent.runtime import SURVEY_ONLY_TOOLS, AgentRuntime, mode_note, require_references_or_model
from agent.state import State
from agent.survey_fusion import survey_evidence
from tools.base import ToolError
from tools.types import Evidence

SURVEY_STAGE = "survey"  # marks the evidence the survey ran (in `Evidence.args["stage"]`)


def survey(state: State, *, rt: AgentRuntime) -> dict:
    """With references: patch_knn and the complementary tools, fused into one reading (`agent.survey_fusion`);
    without: CLIP zero-shot. Their evidence is the model's first reading, and the tools-only verdict."""
    start = time.perf_counter()
    res = rt.resources(state["run_id"])
    n_refs = len(res.ctx.reference_ids)
    memory_normals = sum(1 for e in state.get("memory_examples") or [] if e["example"].get("label") == "normal")
    require_references_or_model(rt, n_refs, memory_normals, state.get("category"))
    mode = mode_note(res.images, state["query_id"], res.ctx.reference_ids) if n_refs else None
    note = " ".join(n[0].upper() + n[1:] for n in [*res.notes, *([mode] if mode else [])]) or None
    evidence: list[Evidence] = []
    names = rt.survey_tools(n_refs)
    for i, name in enumerate(names):
        args = {"image_id": state["query_id"]}
        try:
            ev = rt.run_tool(name, args, res)
        except ToolError as exc:
            if i == 0:  # the base reading has no stand-in: the run fails with its error
                raise
            ev = Evidence(tool=name, args=args, error=str(exc), summary=f"{name} failed: {exc}")
        if len(names) > 1:
            ev.args = {**ev.args, "stage": SURVEY_STAGE}
        evidence.append(ev)
    if len(names) > 1:
        evidence.append(survey_evidence(evidence, state["query_id"], n_refs, rt.survey_weights()))
    for ev in evidence:  # the first scoring evidence carries the notes into the explanation
        if note and ev.score is not None:
            ev.summary = f"{ev.summary} {note}".strip()
            break
    dumped = [ev.model_dump(mode="json") for ev in evidence]
    return {
        "evidence": dumped,
        # the second scale is part of patch_knn's reading: it does not use up the model's tool budget
        "tool_calls": state.get("tool_calls", 0) + len([n for n in names if n not in SURVEY_ONLY_TOOLS]),
        "timings": {"survey_ms": (time.perf_counter() - start) * 1000.0},
    }
