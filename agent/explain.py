"""Explanations that cite the evidence: tool names, numbers and boxes in original-image pixels."""

from __future__ import annotations

from agent.fusion import FusionResult
from tools.types import Evidence, Region


def format_box(region: Region) -> str:
    x0, y0, x1, y1 = region.bbox_xyxy
    return f"({x0}, {y0}, {x1}, {y1})"


def evidence_line(ev: Evidence) -> str:
    """One line for the model and for people: tool, score, top region, summary."""
    if ev.error:
        return f"{ev.tool}: failed ({ev.error})"
    head = f"{ev.tool}"
    if ev.score is not None:
        head += f": score {ev.score:.2f}"
    if ev.regions:
        head += f", top region {format_box(ev.regions[0])}"
    return f"{head}. {ev.summary}".strip()


def templated_explanation(fusion: FusionResult, evidence: list[Evidence], threshold: float) -> str:
    """The explanation when no model speaks: the verdict, then each scoring tool's evidence."""
    verdict = "Anomalous" if fusion.label == "anomalous" else "Normal"
    relation = ">=" if fusion.label == "anomalous" else "<"
    lines = [f"{verdict}: {fusion.describe()}, {relation} threshold {threshold:.2f}."]
    for ev in evidence:
        if ev.score is not None or ev.error:
            lines.append(evidence_line(ev))
    return " ".join(lines)


def cite_fusion(model_text: str, fusion: FusionResult, threshold: float) -> str:
    """The model's explanation followed by the measured basis of the final score."""
    relation = ">=" if fusion.label == "anomalous" else "<"
    basis = f"Final: {fusion.label} ({fusion.describe()}, {relation} threshold {threshold:.2f})."
    model_text = model_text.strip()
    return f"{model_text} {basis}" if model_text else basis
