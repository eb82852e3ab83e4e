"""Fuse the model's P(anomalous) and the tools' calibrated scores into one score in [0, 1].

The formula (a weighted mean in log-odds, i.e. a logistic combination with fixed weights):

    pred_score = sigmoid( sum_i w_i * logit(clip(s_i)) / sum_i w_i )

- ``s_i`` are calibrated scores in [0, 1] (0.5 = at the edge of what the normal references show).
  Their log-odds are soft-bounded, ``logit -> L * tanh(logit / L)`` with ``L = logit(0.99)``, so one
  saturated source cannot veto the others, while the map stays strictly increasing: no two different
  scores tie, and rankings (AUROC) are kept.
- Weights (fixed, not fitted on any test data):
  - the model with token log-probabilities: 1.0 (it sees the whole image and reasons about logic);
    its probability is ``P(anomalous) = P(a) + 0.5 * P(u)`` over the three labels "anomalous",
    "normal" and "uncertain" at the label token (`agent.backends.logprobs.anomaly_probability`):
    the mass on "uncertain" counts half for each side instead of being dropped;
  - the model's label only (no probabilities): 0.5, with the label mapped to 0.85 / 0.15;
  - a final answer "uncertain" (with or without probabilities): 0.25, at its probability (0.5 without);
  - ``patch_knn``: 1.0 (PatchCore-style evidence, the strongest surface-defect measure);
  - ``parts_check``: 0.8 (logical anomalies); ``clip_similarity``: 0.6 (zero-shot, noisier);
  - ``reference_diff``: 0.5 (alignment-sensitive); any other scoring tool: 0.5.
  - ``survey``: 1.0. With references the survey (`agent.nodes.survey`) runs patch_knn and the complementary
    tools and fuses them by its own one-sided rule (`agent.survey_fusion`); its reading stands for the
    tools it ran (their own evidence, marked ``args["stage"] == "survey"``, is not counted again). Calls
    the model makes later count as their own terms.
- A tool called several times (e.g. on zooms) contributes its highest score once: a defect seen anywhere counts.
- The label is ``anomalous`` iff ``pred_score >= threshold`` (default 0.5), never parsed from text.

The inspection-safe policy (a hesitant model never hides a measured defect):

1. Only evidence about the query image, or an image derived from it (a zoom, a SAM crop, an enhanced
   copy), enters the score. A tool run on a reference (``image_id="ref0"``) or a crop of one is left
   out and listed in `FusionResult.excluded`.
2. The tools' own verdict is the fusion of the tool terms alone (`FusionResult.tools_score`). When it
   is at or above the threshold and the model's vote would pull the fused score below it, the model
   dismisses the tools only if it answered "normal" with ``P(normal) >= dismiss_confidence`` (default
   0.9) read from token log-probabilities. A label without probabilities, or "uncertain", never
   dismisses: the model's vote is then not counted and the score is the tools' score.
3. Every disagreement between the model and a tool about the query is returned as a `Disagreement`
   (which tool, its best box, its score, what the model concluded and what the policy did), and
   `agent.explain` writes each into the explanation.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field

from tools.types import Evidence, Region

TOOL_WEIGHTS: dict[str, float] = {
    "survey": 1.0,
    "patch_knn": 1.0,
    "parts_check": 0.8,
    "clip_similarity": 0.6,
    "reference_diff": 0.5,
}
DEFAULT_TOOL_WEIGHT = 0.5
MODEL_WEIGHT_LOGPROBS = 1.0
MODEL_WEIGHT_LABEL = 0.5
MODEL_WEIGHT_UNCERTAIN = 0.25
LABEL_PROBABILITY = {"anomalous": 0.85, "normal": 0.15, "uncertain": 0.5}
DISMISS_CONFIDENCE = 0.9
LOGIT_BOUND = math.log(0.99 / 0.01)  # L: a single source counts at most as much as p = 0.99
_P_EPS = 1e-15  # near float64's resolution at 1: scores keep their order up to logit ~34


def _logit(p: float) -> float:
    """Soft-bounded log-odds of p: L * tanh(logit(p) / L), strictly increasing in p."""
    p = min(max(p, _P_EPS), 1.0 - _P_EPS)
    return LOGIT_BOUND * math.tanh(math.log(p / (1.0 - p)) / LOGIT_BOUND)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class FusionTerm:
    """One input of the fusion: its source, calibrated probability and weight."""

    source: str
    probability: float
    weight: float


@dataclass(frozen=True)
class Disagreement:
    """The model and one tool disagree about the query.

    Attributes:
        tool: the tool's name.
        score: its best calibrated score on the query (or a crop of it).
        box: its top region (xyxy, original-image pixels), or None.
        model_label: "normal", "anomalous" or "uncertain".
        p_normal: the model's P(normal) from token log-probabilities, None without them.
        outcome: "dismissed" (the model's confident "normal" overrode the tool), "tools stand"
            (the model's vote was not counted), "kept" (the fused label sides with the tool anyway)
            or "model flagged" (the model saw an anomaly the tool did not measure).
    """

    tool: str
    score: float
    box: tuple[int, int, int, int] | None
    model_label: str
    p_normal: float | None
    outcome: str


@dataclass(frozen=True)
class FusionResult:
    """The fused verdict.

    Attributes:
        score / label: the final score in [0, 1] and its label (score >= threshold).
        terms: the terms that produced `score`.
        tools_score: the fusion of the tool terms alone (None without a scoring tool on the query).
        model: the model's term (None without a model answer), counted or not.
        model_counted: False when the policy refused the model's dismissal.
        excluded: scored evidence left out because it is not about the query ("patch_knn on ref0 0.91").
        disagreements: every model-vs-tool disagreement about the query.
        dismiss_confidence: the P(normal) the model needed to dismiss a tool-measured defect.
    """

    score: float
    label: str
    terms: tuple[FusionTerm, ...]
    tools_score: float | None = None
    model: FusionTerm | None = None
    model_counted: bool = True
    excluded: tuple[str, ...] = ()
    disagreements: tuple[Disagreement, ...] = field(default_factory=tuple)
    dismiss_confidence: float = DISMISS_CONFIDENCE

    def describe(self) -> str:
        parts = ", ".join(f"{t.source} {t.probability:.2f} (w {t.weight:g})" for t in self.terms)
        text = f"fused score {self.score:.2f} from {parts}"
        if self.model is not None and not self.model_counted:
            text += f"; the {self.model.source}'s {self.model.probability:.2f} not counted (it cannot dismiss the tools)"
        return text


def evidence_image(ev: Evidence) -> str | None:
    """The image id a tool call measured (None: the query, every tool's default)."""
    image_id = (ev.args or {}).get("image_id")
    return str(image_id) if image_id else None


def split_by_image(evidence: list[Evidence], query_ids: Collection[str] | None) -> tuple[list[Evidence], list[Evidence]]:
    """(evidence about the query or images derived from it, scored evidence about anything else).

    Args:
        evidence: every tool call's evidence.
        query_ids: ids of the query and of every image derived from it; None = treat all as the query.
    """
    if query_ids is None:
        return list(evidence), []
    on_query, other = [], []
    for ev in evidence:
        image_id = evidence_image(ev)
        if image_id is None or image_id in query_ids:
            on_query.append(ev)
        elif ev.score is not None and not ev.error:
            other.append(ev)
    return on_query, other


def best_per_tool(evidence: list[Evidence]) -> dict[str, Evidence]:
    """Each scoring tool's highest-scoring evidence (errors and unscored calls ignored), first-seen order."""
    best: dict[str, Evidence] = {}
    for ev in evidence:
        if ev.score is None or ev.error:
            continue
        if ev.tool not in best or float(ev.score) > float(best[ev.tool].score):
            best[ev.tool] = ev
    return best


def without_survey_parts(evidence: list[Evidence]) -> list[Evidence]:
    """The evidence with the survey's component calls left out when its fused reading is present: the
    reading ("survey") already counts them, once, by the survey's own rule (`agent.survey_fusion`)."""
    if not any(ev.tool == "survey" and ev.score is not None for ev in evidence):
        return list(evidence)
    return [ev for ev in evidence if (ev.args or {}).get("stage") != "survey"]


def tool_terms(evidence: list[Evidence]) -> list[FusionTerm]:
    """One term per scoring tool (its highest calibrated score), in first-seen order. The survey's fused
    reading stands for the tools it ran, at weight 1."""
    return [
        FusionTerm(tool, float(ev.score), TOOL_WEIGHTS.get(tool, DEFAULT_TOOL_WEIGHT))
        for tool, ev in best_per_tool(without_survey_parts(evidence)).items()
    ]


def model_term(label: str | None, probability: float | None, weight_factor: float = 1.0) -> FusionTerm | None:
    """The model's term: its P(anomalous) from log-probabilities, else its label; "uncertain" at reduced weight.
    `weight_factor` scales the log-probability weights (0.5 when the label tokens carried under half the mass:
    `score_source` "logprobs-partial")."""
    if label == "uncertain":
        p = float(probability) if probability is not None else LABEL_PROBABILITY["uncertain"]
        return FusionTerm("model (uncertain)", p, MODEL_WEIGHT_UNCERTAIN * (weight_factor if probability is not None else 1.0))
    if probability is not None:
        return FusionTerm("model", float(probability), MODEL_WEIGHT_LOGPROBS * weight_factor)
    if label is not None:
        return FusionTerm("model label", LABEL_PROBABILITY[label], MODEL_WEIGHT_LABEL)
    return None


def combine(terms: list[FusionTerm]) -> float:
    """sigmoid of the weighted mean of the terms' bounded log-odds. The survey's reading alone is its own
    probability: it is already a fused, order-keeping reading (`agent.survey_fusion`)."""
    if len(terms) == 1 and terms[0].source == "survey":
        return min(max(float(terms[0].probability), 0.0), 1.0)
    total = sum(t.weight for t in terms)
    return _sigmoid(sum(t.weight * _logit(t.probability) for t in terms) / total)


def _box(ev: Evidence) -> tuple[int, int, int, int] | None:
    regions: list[Region] = ev.regions
    return tuple(regions[0].bbox_xyxy) if regions else None  # type: ignore[return-value]


def _disagreements(best: dict[str, Evidence], label: str | None, p_normal: float | None,
                   threshold: float, flagged_outcome: str) -> tuple[Disagreement, ...]:
    if label is None:
        return ()
    out = []
    for tool, ev in best.items():
        score = float(ev.score)
        if score >= threshold and label != "anomalous":
            out.append(Disagreement(tool, score, _box(ev), label, p_normal, flagged_outcome))
        elif score < threshold and label == "anomalous":
            out.append(Disagreement(tool, score, _box(ev), label, p_normal, "model flagged"))
    return tuple(out)


def fuse(evidence: list[Evidence], model_label: str | None = None,
         model_probability: float | None = None, threshold: float = 0.5, *,
         p_normal: float | None = None, dismiss_confidence: float = DISMISS_CONFIDENCE,
         query_ids: Collection[str] | None = None, model_weight_factor: float = 1.0) -> FusionResult:
    """Combine tool evidence and the model's answer by the module's formula and policy.

    Args:
        evidence: every tool call's evidence (only calls about the query count).
        model_label: "normal", "anomalous", "uncertain", or None without a model answer.
        model_probability: the model's P(anomalous) from log-probabilities (P(a) + 0.5 P(u)), or None.
        threshold: the decision threshold on the fused score.
        p_normal: the model's P(normal) from log-probabilities, or None.
        dismiss_confidence: the P(normal) the model needs to overrule tools that flag the query.
        query_ids: ids of the query and the images derived from it; None = all evidence is about the query.
        model_weight_factor: scales the model's log-probability weight (0.5 for "logprobs-partial").

    Raises:
        ValueError: when there is nothing to fuse (no scoring tool and no model answer).
    """
    on_query, other = split_by_image(evidence, query_ids)
    excluded = tuple(f"{ev.tool} on {evidence_image(ev)} {float(ev.score):.2f}" for ev in other)
    best = best_per_tool(without_survey_parts(on_query))
    t_terms = tool_terms(on_query)
    m_term = model_term(model_label, model_probability, model_weight_factor)
    terms = [*t_terms, *([m_term] if m_term is not None else [])]
    if not terms:
        msg = "nothing to fuse: no tool produced a score on the query image and no model answered"
        raise ValueError(msg)
    score = combine(terms)
    tools_score = combine(t_terms) if t_terms else None
    counted = True
    outcome = "kept"
    if m_term is not None and tools_score is not None and tools_score >= threshold and score < threshold:
        confident = model_label == "normal" and p_normal is not None and p_normal >= dismiss_confidence
        if confident:
            outcome = "dismissed"
        else:
            outcome, counted, score, terms = "tools stand", False, tools_score, list(t_terms)
    label = "anomalous" if score >= threshold else "normal"
    return FusionResult(
        score=score, label=label, terms=tuple(terms), tools_score=tools_score, model=m_term,
        model_counted=counted, excluded=excluded,
        disagreements=_disagreements(best, model_label, p_normal, threshold, outcome),
        dismiss_confidence=dismiss_confidence,
    )
