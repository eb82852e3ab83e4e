"""Explanations that cite the evidence: tool names, numbers and boxes in original-image pixels."""

from __future__ import annotations

from agent.fusion import Disagreement, FusionResult
from tools.types import Evidence, Region


def format_box(region: Region) -> str:
    return _format_xyxy(region.bbox_xyxy)


def _format_xyxy(box: tuple[int, int, int, int]) -> str:
    x0, y0, x1, y1 = box
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


def _model_view(d: Disagreement) -> str:
    if d.p_normal is not None:
        return f'the model concluded "{d.model_label}" (P(normal) {d.p_normal:.2f} from token log-probabilities)'
    return f'the model concluded "{d.model_label}" (a label without probabilities)'


def disagreement_line(d: Disagreement, threshold: float, dismiss_confidence: float, reason: str = "") -> str:
    """One sentence: which tool flagged which box at what score, what the model concluded and why,
    and what the fusion policy did about it."""
    where = f" box {_format_xyxy(d.box)}" if d.box else ""
    why = f" because: {reason}" if reason else ""
    if d.outcome == "model flagged":
        return (f"Disagreement: {_model_view(d)}{why}; {d.tool} scored only {d.score:.2f}{where} on the query "
                f"(threshold {threshold:.2f}).")
    head = f"Disagreement: {d.tool} flagged{where} at {d.score:.2f}; {_model_view(d)}{why}."
    if d.outcome == "dismissed":
        return f"{head} Its P(normal) clears dismiss_confidence {dismiss_confidence:.2f}, so its answer overrules the tool."
    if d.outcome == "tools stand":
        if d.model_label == "uncertain":
            cause = '"uncertain" never dismisses a measured defect'
        elif d.p_normal is None:
            cause = "a label without probabilities never dismisses a measured defect"
        else:
            cause = f"its P(normal) is below dismiss_confidence {dismiss_confidence:.2f}"
        return f"{head} The tools' verdict stands: {cause}."
    return f"{head} The fused score still follows the tool."


def _first_sentence(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    cut = text.find(". ")
    text = text[: cut + 1] if 0 < cut < limit else text
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def policy_notes(fusion: FusionResult, threshold: float, model_text: str = "") -> list[str]:
    """The disagreements and the evidence left out of the score, as sentences (empty when none)."""
    reason = _first_sentence(model_text) if model_text else ""
    lines = [disagreement_line(d, threshold, fusion.dismiss_confidence, reason) for d in fusion.disagreements]
    if fusion.excluded:
        lines.append(f"Left out of the score (not about the query image): {', '.join(fusion.excluded)}.")
    return lines


def templated_explanation(fusion: FusionResult, evidence: list[Evidence], threshold: float) -> str:
    """The explanation when no model speaks: the verdict, then each scoring tool's evidence."""
    verdict = "Anomalous" if fusion.label == "anomalous" else "Normal"
    relation = ">=" if fusion.label == "anomalous" else "<"
    lines = [f"{verdict}: {fusion.describe()}, {relation} threshold {threshold:.2f}."]
    for ev in evidence:
        if ev.score is not None or ev.error:
            lines.append(evidence_line(ev))
    lines.extend(policy_notes(fusion, threshold))
    return " ".join(lines)


def cite_fusion(model_text: str, fusion: FusionResult, threshold: float) -> str:
    """The model's explanation, every model-vs-tool disagreement, then the measured basis of the final score."""
    relation = ">=" if fusion.label == "anomalous" else "<"
    basis = f"Final: {fusion.label} ({fusion.describe()}, {relation} threshold {threshold:.2f})."
    model_text = model_text.strip()
    parts = [model_text] if model_text else []
    parts.extend(policy_notes(fusion, threshold, model_text))
    parts.append(basis)
    return " ".join(parts)
