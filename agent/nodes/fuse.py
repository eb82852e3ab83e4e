"""fuse: one calibrated score from the model's answer and the tools' scores, and the final `Verdict`."""

from __future__ import annotations

import time

from agent.explain import cite_fusion, hard_normal_note, headline, templated_explanation
from agent.fusion import fuse as fuse_scores
from agent.fusion import split_by_image, without_survey_parts
from agent.nodes.memory import is_hard_normal
from agent.runtime import AgentRuntime
from agent.schemas import Region, Usage, Verdict
from agent.state import State
from tools.types import Evidence

MAX_REGIONS = 3


def _model_regions(answer: dict, width: int, height: int) -> list[Region]:
    regions = []
    for box in answer.get("regions") or []:
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1 = sorted((min(max(x0, 0), width), min(max(x1, 0), width)))
        y0, y1 = sorted((min(max(y0, 0), height), min(max(y1, 0), height)))
        if x1 > x0 and y1 > y0:
            regions.append(Region(bbox_xyxy=(int(x0), int(y0), int(round(x1)), int(round(y1))), label=answer.get("defect_type") or "model"))
    return regions


def query_lineage(images, query_id: str) -> set[str]:
    """Ids of the query and every image derived from it (zooms, SAM crops, enhanced copies)."""
    ids = set()
    for image_id in images.ids():
        current = images.get(image_id)
        while current.parent is not None:
            current = images.get(current.parent)
        if current.id == query_id:
            ids.add(image_id)
    return ids


def query_evidence_for_fusion(evidence: list[Evidence], on_query: set[str]) -> list[Evidence]:
    """The evidence about the query that the fusion counts (the survey's parts inside its reading)."""
    return split_by_image(evidence, on_query)[0]


def _tool_regions(evidence: list[Evidence]) -> list[Region]:
    """The regions of the highest-scoring evidence; the survey's reading stands for its parts
    (`agent.fusion.without_survey_parts`), so its regions are the ones its own rule picked."""
    scored = [e for e in without_survey_parts(evidence) if e.score is not None and e.regions and not e.error]
    if not scored:
        return []
    best = max(scored, key=lambda e: e.score)
    return best.regions[:MAX_REGIONS]


def fuse(state: State, *, rt: AgentRuntime) -> dict:
    start = time.perf_counter()
    cfg = rt.config
    threshold, threshold_source = rt.active_threshold(state.get("category"))
    res = rt.resources(state["run_id"])
    query = res.images.get(state["query_id"])
    evidence = [Evidence.model_validate(e) for e in state.get("evidence", [])]
    answer = state.get("model_answer")
    label = answer["label"] if answer else None
    probability = answer.get("probability") if answer else None
    on_query = query_lineage(res.images, state["query_id"])
    try:
        result = fuse_scores(evidence, label, probability, threshold, p_normal=(answer or {}).get("p_normal"),
                             policy=cfg.policy, query_ids=on_query,
                             model_weight_factor=float((answer or {}).get("weight_factor", 1.0)),
                             survey_weights=rt.survey_weights())
    except ValueError:
        if state.get("model_error"):
            from agent.backends.errors import ModelOutputError

            raise ModelOutputError(state["model_error"]) from None
        raise
    if answer:
        explanation = cite_fusion(answer["explanation"], result, threshold)
        source = answer.get("score_source") or ("logprobs" if probability is not None else "label")
    else:
        first = headline(result, query_evidence_for_fusion(evidence, on_query), threshold, width=query.width,
                         height=query.height, n_references=len(res.ctx.reference_ids), category=state.get("category"))
        explanation = templated_explanation(result, evidence, threshold, first)
        source = "tools"
    hard_ids = [e["example"]["id"] for e in state.get("memory_examples") or [] if is_hard_normal(e["example"])]
    taught = hard_normal_note(query_evidence_for_fusion(evidence, on_query), result.label, threshold, hard_ids)
    if taught:
        explanation += " " + taught
    if state.get("model_error"):
        explanation += f" (The model's verdict was invalid even after one repair, so the tools decided alone: {state['model_error']})"
    if state.get("budget_exhausted"):
        explanation += f" (The agent stopped on its budget: {state['budget_exhausted']}; it decided with the evidence it had.)"
    regions: list[Region] = []
    if result.label == "anomalous":
        query_evidence, _ = split_by_image(evidence, on_query)
        regions = (_model_regions(answer, query.width, query.height) if answer else []) or _tool_regions(query_evidence)
    timings = dict(state.get("timings", {}))
    timings["fuse_ms"] = (time.perf_counter() - start) * 1000.0
    verdict = Verdict(
        image=state["image"] if isinstance(state.get("image"), str) else None,
        category=state.get("category"),
        pred_label=result.label,
        pred_score=result.score,
        threshold=threshold,
        threshold_source=threshold_source,
        score_source=source,
        defect_type=(answer or {}).get("defect_type") if result.label == "anomalous" else None,
        regions=regions,
        explanation=explanation,
        evidence=evidence,
        backend=rt.backend.name,
        model_id=rt.backend.model_id,
        prompt_hash=rt.prompts.hash,
        usage=Usage(
            model_calls=state.get("model_calls", 0),
            prompt_tokens=state.get("prompt_tokens", 0),
            completion_tokens=state.get("completion_tokens", 0),
            tool_calls=state.get("tool_calls", 0),
        ),
        timings=timings,
        budget_exhausted=bool(state.get("budget_exhausted")),
        disputed=result.disputed,
        policy=result.policy,
    )
    return {"verdict": verdict.model_dump(mode="json"), "timings": {"fuse_ms": timings["fuse_ms"]}}
