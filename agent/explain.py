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


def disagreement_line(d: Disagreement, threshold: float, reason: str = "") -> str:
    """One sentence: which tool flagged which box at what score, what the model concluded and why,
    and what the fusion policy did about it."""
    where = f" box {_format_xyxy(d.box)}" if d.box else ""
    why = f" because: {reason}" if reason else ""
    if d.outcome == "model flagged":
        return (f"Disagreement: {_model_view(d)}{why}; {d.tool} scored only {d.score:.2f}{where} on the query "
                f"(threshold {threshold:.2f}).")
    head = f"Disagreement: {d.tool} flagged{where} at {d.score:.2f}; {_model_view(d)}{why}."
    if d.outcome == "model prevailed":
        return f"{head} The model's answer took the score below the threshold {threshold:.2f}."
    return f"{head} The verdict stays anomalous with the measured evidence."


def _first_sentence(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    cut = text.find(". ")
    text = text[: cut + 1] if 0 < cut < limit else text
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _model_answer(fusion: FusionResult) -> str:
    label, p_normal = fusion.model_label, fusion.p_normal
    if p_normal is not None:
        return f'"{label}" (P(normal) {p_normal:.4g} from token log-probabilities)'
    if fusion.model is not None and fusion.model.source == "model":
        return f'"{label}" (P(anomalous) {fusion.model.probability:.4g} from token log-probabilities)'
    return f'"{label}" (a label without probabilities)'


def disputed_line(fusion: FusionResult, threshold: float, reason: str = "") -> str:
    """The model's answer and reason beside the measured evidence, and what the policy did (a disputed verdict)."""
    side = "anomalous" if fusion.reading is not None and fusion.reading >= threshold else "normal"
    tools = ", ".join(f"{t.source} {t.probability:.2f}" for t in fusion.tool_terms)
    why = f' Its reason: "{reason}"' if reason else " It gave no reason."
    evidence = (f"The measured evidence reads {fusion.reading:.2f} ({tools}), on the {side} side of the "
                f"threshold {threshold:.2f}")
    if fusion.stands:
        evidence += " and clearly beyond it (by at least logit(0.9) in log-odds)"
    text = f"Disputed: the model answered {_model_answer(fusion)}.{why} {evidence}."
    if fusion.policy == "model-decides":
        return text + (f" Policy model-decides: the weighted fusion decides, {fusion.label} at {fusion.score:.2f}.")
    if fusion.label == side:
        if fusion.stands:
            return text + (f" Policy evidence-stands: the measured evidence stands; the model may lower the score only"
                           f" within the anomalous side ({fusion.score:.2f}).")
        return text + f" Policy evidence-stands: the verdict stays {side} ({fusion.score:.2f})."
    return text + (f" Policy evidence-stands: the reading is not clearly beyond the threshold, so the model's answer"
                   f" moved the verdict to {fusion.label} ({fusion.score:.2f}).")


def policy_notes(fusion: FusionResult, threshold: float, model_text: str = "") -> list[str]:
    """The disputed verdict's two sides, the disagreements and the evidence left out of the score, as
    sentences (empty when none)."""
    reason = _first_sentence(model_text) if model_text else ""
    lines = []
    if fusion.disputed and fusion.model_label is not None:
        lines.append(disputed_line(fusion, threshold, reason))
        reason = ""  # said once, beside the evidence
    lines.extend(disagreement_line(d, threshold, reason) for d in fusion.disagreements)
    if fusion.excluded:
        lines.append(f"Left out of the score (not about the query image): {', '.join(fusion.excluded)}.")
    return lines


def _where(box: tuple[int, int, int, int], width: int, height: int) -> str:
    """Plain words for a box's place in the image: "the top-left area", "the centre", "the lower half"."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2 / max(width, 1), (y0 + y1) / 2 / max(height, 1)
    if (x1 - x0) >= 0.6 * width and (y1 - y0) < 0.6 * height:
        return "the upper half" if cy < 0.5 else "the lower half"
    if (y1 - y0) >= 0.6 * height and (x1 - x0) < 0.6 * width:
        return "the left half" if cx < 0.5 else "the right half"
    row = "top" if cy < 1 / 3 else ("bottom" if cy > 2 / 3 else "")
    col = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "")
    if not row and not col:
        return "the centre"
    return f"the {'-'.join(p for p in (row, col) if p)} area"


def _how_sure(score: float, threshold: float) -> str:
    """Words for the distance between the score and the threshold, in log-odds (logit(0.9) ~ 2.2 nats: clearly)."""
    import math

    def logit(p: float) -> float:
        p = min(max(p, 1e-9), 1 - 1e-9)
        return math.log(p / (1 - p))

    gap = abs(logit(score) - logit(threshold))
    return "clearly" if gap >= logit(0.9) else ("probably" if gap >= logit(0.7) else "borderline")


def _times(ratio: float) -> str:
    words = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}
    r = round(ratio)
    if abs(ratio - r) < 0.15 and r in words:
        return words[r]
    return f"{ratio:.1f} times"


def headline(fusion: FusionResult, evidence: list[Evidence], threshold: float, *, width: int, height: int,
             n_references: int, category: str | None) -> str:
    """The explanation's first sentence in plain words: what, where, how sure, and compared with what.

    E.g. "Anomalous, clearly: the lower half of the bottle differs from all 4 good references 3.2 times as much
    as they differ from each other (score 0.97, threshold 0.50)." Raw units stay in the evidence.
    """
    thing = f"the {category}" if category else "the image"
    sure = _how_sure(fusion.score, threshold)
    numbers = f"(score {fusion.score:.2f}, threshold {threshold:.2f})"
    # the survey's two scales (patch_knn and patch_knn_fine, summed) speak through the survey's evidence: its
    # ratio is their sum's, its regions those of the scale that sees more
    scales = next((e for e in evidence if e.tool == "survey" and e.normal_ratio is not None), None)
    parts = ("patch_knn", "patch_knn_fine") if scales else ()
    scored = [*([scales] if scales else []),
              *(e for e in evidence if e.score is not None and not e.error and e.tool not in ("survey", *parts))]
    lead = max(scored, key=lambda e: float(e.score), default=None)
    if n_references == 0 or lead is None:
        word = "Anomalous" if fusion.label == "anomalous" else "Normal"
        return f"{word}, {sure} {numbers}, judged without normal references."
    refs = f"all {n_references} good references" if n_references > 1 else "the good reference"
    # what the tools' normal ratio compares with: the references' spread among themselves, or with one reference
    # its slightly moved copies (`tools.calibration`: shifted, rotated, brightened), which vary less than real images
    single = n_references == 1
    if fusion.label == "anomalous":
        where = _where(lead.regions[0].bbox_xyxy, width, height) if lead.regions else "the image"
        them = "slightly moved copies of it do" if single else "they differ from each other"
        how = (f" {_times(lead.normal_ratio)} as much as {them}"
               if lead.normal_ratio is not None and lead.normal_ratio > 1 else "")
        per = "" if lead.tool in ("patch_knn", "survey") else f" ({lead.tool})"
        return f"Anomalous, {sure}: {where} of {thing} differs from {refs}{how}{per} {numbers}."
    ratios = [e.normal_ratio for e in scored if e.normal_ratio is not None]
    them = "slightly moved copies of it are" if single else "they are from each other"
    if not ratios:
        within = ""
    elif max(ratios) <= 1.05:
        within = f", no more different than {them}"
    else:
        within = f", at most {_times(max(ratios))} as different as {them}"
    verb = "shows" if single else "show"
    return f"Normal, {sure}: {thing} is within what {refs} {verb}{within} {numbers}."


def hard_normal_note(evidence: list[Evidence], label: str, threshold: float, examples: list[str]) -> str:
    """When the tools' reading is normal only because the inspector's hard normals widened the references: a
    sentence saying so, what the reading would be without them, and how to undo them ("" otherwise).

    `evidence`: the query's (the survey's reading, else patch_knn's, speaks); `examples`: the hard normals'
    memory example ids, to name in the undo command.
    """
    ev = next((e for e in evidence if e.tool == "survey" and e.hard_normals is not None), None) or next(
        (e for e in evidence if e.tool == "patch_knn" and e.hard_normals is not None and not e.error), None)
    if label != "normal" or ev is None or ev.hard_normals.score_without < threshold:
        return ""
    hard = ev.hard_normals
    which = f" ({', '.join(examples)})" if examples else ""
    return (f"Normal because of the inspector's feedback: without the {hard.n} image(s) marked as false alarms"
            f"{which} that joined the references, the tools' reading would be {hard.score_without:.2f}, anomalous at "
            f"threshold {threshold:.2f}; it resembles what they show. If one of them was a defect after all, remove "
            "it from memory (`anomaly-agent memory remove ID`, or DELETE /v1/memory/examples/ID).")


def templated_explanation(fusion: FusionResult, evidence: list[Evidence], threshold: float,
                          first: str = "") -> str:
    """The explanation when no model speaks: the plain-words `first` sentence (`headline`), the verdict's
    basis, then each scoring tool's evidence."""
    verdict = "Anomalous" if fusion.label == "anomalous" else "Normal"
    relation = ">=" if fusion.label == "anomalous" else "<"
    lines = [first] if first else []
    lines.append(f"{verdict}: {fusion.describe()}, {relation} threshold {threshold:.2f}.")
    for ev in evidence:
        if ev.score is not None or ev.error:
            lines.append(evidence_line(ev))
    lines.extend(policy_notes(fusion, threshold))
    return " ".join(lines)


def cite_fusion(model_text: str, fusion: FusionResult, threshold: float) -> str:
    """The model's explanation, the disputed verdict's two sides (when disputed), every model-vs-tool
    disagreement, then the measured basis of the final score."""
    relation = ">=" if fusion.label == "anomalous" else "<"
    basis = f"Final: {fusion.label} ({fusion.describe()}, {relation} threshold {threshold:.2f})."
    model_text = model_text.strip()
    parts = [model_text] if model_text else []
    parts.extend(policy_notes(fusion, threshold, model_text))
    parts.append(basis)
    return " ".join(parts)
