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

The safety policy (setting ``policy``; README "Safety policy"). An inspection tool must never let a
model talk away a defect that the measurements clearly show:

1. Only evidence about the query image, or an image derived from it (a zoom, a SAM crop, an enhanced
   copy), enters the score. A tool run on a reference (``image_id="ref0"``) or a crop of one is left
   out and listed in `FusionResult.excluded`.
2. **The measured reading** ``s`` (`FusionResult.reading`) is the survey's fused reading (`agent.survey_fusion`)
   when there is one; without a survey, the fusion of the tool terms alone. Tools the model calls after the
   survey can raise the reading but never lower it below the survey's: ``s = max(survey, fusion of all tool
   terms)``. Without a survey the full-weight tool (``patch_knn``) anchors the reading the same way. A
   reading made only of down-weighted tools (zero-shot CLIP, an incidental tool) has no anchor: it never
   forces a verdict, and the plain weighted fusion decides. Inside the survey, one down-weighted part
   (``reference_diff``, ``parts_check``, at the weight ``survey_weights`` gives it) could add more than
   logit(0.9) (0.5 L ~ 2.30 nats at weight 0.5): for the stands rule and the floor (`FusionResult.standing`) its part counts at most just
   under logit(0.9), so a down-weighted tool on its own (the rest of the survey reading at or below the
   threshold) never forces a verdict.
3. **Default, ``evidence-stands``.** With an anchored reading the model's term is fused with the reading
   (one term, weight 1), and the result may not fall below a floor that follows the reading:

       score = max( combine([reading s (w 1), model]),  floor(s') ),
       floor(s') = sigmoid(logit(s') - logit(0.9))   (raised to the threshold when it is beyond the margin)

   where s' is the standing reading: s, with one down-weighted survey part capped (2, above).

   The model can move the reading down by at most logit(0.9) ~ 2.2 nats of log-odds. So a reading
   *clearly beyond* the active threshold t, ``logit(s) >= logit(t) + logit(0.9)`` (0.9 when t = 0.5; relative
   to a refit per-category threshold when there is one), stays anomalous whatever the model says: the model
   may lower the score only within the anomalous side, never below t. Below that margin a confident
   "normal" still lowers the reading across the threshold: the model keeps its use against near-edge
   false alarms. The score is continuous and monotone non-decreasing in every tool score and in the
   model's P(anomalous): there is no dismissal rule that makes it jump.
4. **Opt-in ``model-decides``**, for users who trust their model: the plain weighted fusion above decides
   (no floor, and incidental tools count as ordinary terms).
5. The verdict is **disputed** when the model's label ("normal" or "anomalous"; "uncertain" takes no side)
   is on the other side of the threshold from the measured reading. A disputed verdict says so, with
   the model's reason and the evidence side by side (`agent.explain`), under either policy. Every
   disagreement between the model and a tool about the query is returned as a `Disagreement` (which
   tool, its best box, its score, what the model concluded and what the policy did).
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
POLICIES = ("evidence-stands", "model-decides")
DEFAULT_POLICY = "evidence-stands"
STANDS_MARGIN = math.log(0.9 / 0.1)  # logit(0.9): "clearly beyond" the threshold, and the most the model may lower
ANCHOR_WEIGHT = 1.0  # a tool at this weight (or the survey) anchors the measured reading; below it: down-weighted
SINGLE_PART_CAP = STANDS_MARGIN * (1.0 - 1e-6)  # one down-weighted survey part's most log-odds toward "stands"
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
        tool: the tool's name ("survey" for the survey's fused reading).
        score: its best calibrated score on the query (or a crop of it).
        box: its top region (xyxy, original-image pixels), or None.
        model_label: "normal", "anomalous" or "uncertain".
        p_normal: the model's P(normal) from token log-probabilities, None without them.
        outcome: "evidence stands" (the verdict stays anomalous with the tool), "model prevailed" (the
            model's answer took the verdict below the threshold) or "model flagged" (the model saw an
            anomaly the tool did not measure).
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
        terms: the terms that produced the model-weighted part of `score` (under "evidence-stands" with an
            anchored reading: the measured reading and the model).
        tools_score: the verdict's score without the model (None without a scoring tool on the query).
        model: the model's term (None without a model answer).
        excluded: scored evidence left out because it is not about the query ("patch_knn on ref0 0.91").
        disagreements: every model-vs-tool disagreement about the query.
        policy: "evidence-stands" or "model-decides".
        reading: the measured reading s (module docstring, 2), None without a scoring tool on the query.
        standing: the reading the stands rule and the floor read: `reading`, except that one down-weighted
            survey part alone counts at most just under logit(0.9) (module docstring, 2).
        tool_terms: the tool terms the reading was built from.
        anchored: the reading has a survey or full-weight tool (only then can it stand).
        stands: the reading is clearly beyond the threshold (by logit(0.9) in log-odds) and the policy
            keeps it anomalous whatever the model says.
        floor: the floor the model could not push the score below (None when none applies).
        floored: the floor raised the score above the model-weighted fusion.
        disputed: the model's label is on the other side of the threshold from the reading.
        threshold: the threshold the label was decided at.
        model_label / p_normal: the model's answer as given to `fuse` (None without one).
    """

    score: float
    label: str
    terms: tuple[FusionTerm, ...]
    tools_score: float | None = None
    model: FusionTerm | None = None
    excluded: tuple[str, ...] = ()
    disagreements: tuple[Disagreement, ...] = field(default_factory=tuple)
    policy: str = DEFAULT_POLICY
    reading: float | None = None
    standing: float | None = None
    tool_terms: tuple[FusionTerm, ...] = ()
    anchored: bool = False
    stands: bool = False
    floor: float | None = None
    floored: bool = False
    disputed: bool = False
    threshold: float = 0.5
    model_label: str | None = None
    p_normal: float | None = None

    def describe(self) -> str:
        tools = ", ".join(f"{t.source} {t.probability:.2f} (w {t.weight:g})" for t in self.tool_terms)
        if self.policy == "model-decides" or not self.anchored or self.model is None:
            parts = ", ".join(f"{t.source} {t.probability:.2f} (w {t.weight:g})" for t in self.terms)
            return f"fused score {self.score:.2f} from {parts}"
        m = self.model
        text = (f"fused score {self.score:.2f} from the measured reading {self.reading:.2f} ({tools}) and the "
                f"{m.source} {m.probability:.2f} (w {m.weight:g})")
        if self.floored:
            text += (f"; the model may lower the measured reading by at most logit(0.9) in log-odds"
                     f"{', and never below the threshold' if self.stands else ''}, so the score is held at {self.floor:.2f}")
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


def to_score(log_odds: float) -> float:
    """sigmoid(S asinh(L / S)), S = logit(0.99): ~ sigmoid(L) near the edge, strictly increasing, and it never
    rounds to 1.0 in practice (a calibrated score does beyond L ~ 37, and then strong defects tie)."""
    return _sigmoid(LOGIT_BOUND * math.asinh(log_odds / LOGIT_BOUND))


def term_probability(ev: Evidence) -> float:
    """A tool's probability in the fusion: from its unbounded log-odds when it reports them (order kept where
    its calibrated score rounds to 1.0), else its calibrated score."""
    return to_score(float(ev.log_odds)) if ev.log_odds is not None else float(ev.score)


def tool_terms(evidence: list[Evidence]) -> list[FusionTerm]:
    """One term per scoring tool (its highest calibrated score), in first-seen order. The survey's fused
    reading stands for the tools it ran, at weight 1."""
    return [
        FusionTerm(tool, term_probability(ev), TOOL_WEIGHTS.get(tool, DEFAULT_TOOL_WEIGHT))
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
    """sigmoid of the weighted mean of the terms' bounded log-odds; a single term is its own probability
    (nothing to weigh it against, so nothing to bound)."""
    if len(terms) == 1:
        return min(max(float(terms[0].probability), 0.0), 1.0)
    total = sum(t.weight for t in terms)
    return _sigmoid(sum(t.weight * _logit(t.probability) for t in terms) / total)


def _box(ev: Evidence) -> tuple[int, int, int, int] | None:
    regions: list[Region] = ev.regions
    return tuple(regions[0].bbox_xyxy) if regions else None  # type: ignore[return-value]



def _raw_logit(p: float) -> float:
    """Plain log-odds of p (clipped to float resolution), for margins against the threshold."""
    p = min(max(float(p), _P_EPS), 1.0 - _P_EPS)
    return math.log(p / (1.0 - p))


def stands_floor(reading: float, threshold: float) -> float:
    """The lowest score the model may bring an anchored reading to under "evidence-stands":
    ``sigmoid(logit(reading) - logit(0.9))``, and at least the threshold once the reading is clearly beyond
    it (``logit(reading) >= logit(threshold) + logit(0.9)``). Non-decreasing and continuous in the reading
    (up to float rounding at the margin)."""
    shifted = _raw_logit(reading) - STANDS_MARGIN
    floor = _sigmoid(shifted)
    if shifted >= _raw_logit(threshold):
        floor = max(floor, float(threshold))
    return floor


def clearly_beyond(reading: float, threshold: float) -> bool:
    """The reading is at least logit(0.9) nats above the threshold in log-odds."""
    return _raw_logit(reading) - STANDS_MARGIN >= _raw_logit(threshold)


def _survey_standing(on_query: list[Evidence], survey_score: float, weights: dict[str, float] | None) -> float:
    """The survey's reading with its largest down-weighted part capped just under logit(0.9) of log-odds, so
    that part alone (the rest of the survey at or below the threshold) never takes the reading clearly beyond
    the threshold. Works on the survey's own log-odds (inverting `agent.survey_fusion.to_score`), so it is
    non-decreasing in every part's score and equals the survey's reading when no single part adds more.
    `weights`: the survey's weights (`AgentRuntime.survey_weights`; None: the defaults)."""
    from agent.survey_fusion import survey_terms, to_score

    terms = survey_terms([ev for ev in on_query if (ev.args or {}).get("stage") == "survey"], 2, weights)
    top = max((t.contribution for t in terms if not t.base), default=0.0)
    excess = top - SINGLE_PART_CAP
    if excess <= 0 or not any(t.base for t in terms):
        return survey_score
    total = LOGIT_BOUND * math.sinh(_raw_logit(survey_score) / LOGIT_BOUND)  # the survey's L
    return min(survey_score, to_score(total - excess))


def measured_reading(on_query: list[Evidence], survey_weights: dict[str, float] | None = None,
                     ) -> tuple[float | None, float | None, list[FusionTerm], bool]:
    """(the measured reading s, the reading the stands rule reads, the tool terms, whether it is anchored)
    for evidence about the query.

    With a survey reading: ``max(survey, combine(tool terms))``, so tools called after the survey raise the
    reading but never lower it. Without one, the full-weight tools anchor it the same way. Without an
    anchor (only down-weighted tools): the tool terms' plain combination, unanchored. The standing reading
    is the same except that one down-weighted survey part counts at most just under logit(0.9)
    (`_survey_standing`).
    """
    t_terms = tool_terms(on_query)
    if not t_terms:
        return None, None, [], False
    plain = combine(t_terms)
    anchors = [t for t in t_terms if t.weight >= ANCHOR_WEIGHT]
    survey = [t for t in anchors if t.source == "survey"]
    base = survey or anchors
    if not base:
        return plain, plain, t_terms, False
    reading = max(combine(base), plain)
    if not survey:
        return reading, reading, t_terms, True
    standing = _survey_standing(on_query, survey[0].probability, survey_weights)
    return reading, (standing if len(t_terms) == 1 else max(standing, plain)), t_terms, True


def _disagreements(best: dict[str, Evidence], label: str | None, p_normal: float | None,
                   threshold: float, final_label: str) -> tuple[Disagreement, ...]:
    if label is None:
        return ()
    out = []
    for tool, ev in best.items():
        score = float(ev.score)
        if score >= threshold and label != "anomalous":
            outcome = "evidence stands" if final_label == "anomalous" else "model prevailed"
            out.append(Disagreement(tool, score, _box(ev), label, p_normal, outcome))
        elif score < threshold and label == "anomalous":
            out.append(Disagreement(tool, score, _box(ev), label, p_normal, "model flagged"))
    return tuple(out)


def fuse(evidence: list[Evidence], model_label: str | None = None,
         model_probability: float | None = None, threshold: float = 0.5, *,
         p_normal: float | None = None, policy: str = DEFAULT_POLICY,
         query_ids: Collection[str] | None = None, model_weight_factor: float = 1.0,
         survey_weights: dict[str, float] | None = None) -> FusionResult:
    """Combine tool evidence and the model's answer by the module's formula and safety policy.

    Args:
        evidence: every tool call's evidence (only calls about the query count).
        model_label: "normal", "anomalous", "uncertain", or None without a model answer.
        model_probability: the model's P(anomalous) from log-probabilities (P(a) + 0.5 P(u)), or None.
        threshold: the decision threshold on the fused score (the active one: configured or refit).
        p_normal: the model's P(normal) from log-probabilities, or None (reported, not used in the score).
        policy: "evidence-stands" (default) or "model-decides".
        query_ids: ids of the query and the images derived from it; None = all evidence is about the query.
        model_weight_factor: scales the model's log-probability weight (0.5 for "logprobs-partial").
        survey_weights: the weights the survey used (`AgentRuntime.survey_weights`; None: the defaults), for
            the cap on one down-weighted survey part (module docstring, 2).

    Raises:
        ValueError: when there is nothing to fuse (no scoring tool and no model answer), or an unknown policy.
    """
    if policy not in POLICIES:
        msg = f"unknown policy {policy!r}: use one of {', '.join(POLICIES)}"
        raise ValueError(msg)
    on_query, other = split_by_image(evidence, query_ids)
    excluded = tuple(f"{ev.tool} on {evidence_image(ev)} {float(ev.score):.2f}" for ev in other)
    best = best_per_tool(without_survey_parts(on_query))
    reading, standing, t_terms, anchored = measured_reading(on_query, survey_weights)
    m_term = model_term(model_label, model_probability, model_weight_factor)
    if not t_terms and m_term is None:
        msg = "nothing to fuse: no tool produced a score on the query image and no model answered"
        raise ValueError(msg)
    floor: float | None = None
    floored = stands = False
    if policy == "model-decides" or not anchored:
        terms = [*t_terms, *([m_term] if m_term is not None else [])]
        score = combine(terms)
        tools_score = combine(t_terms) if t_terms else None
    else:
        assert reading is not None and standing is not None
        tools_score = reading
        stands = clearly_beyond(standing, threshold)
        if m_term is None:
            terms, score = list(t_terms), reading
        else:
            terms = [FusionTerm("measured reading", reading, ANCHOR_WEIGHT), m_term]
            fused = combine(terms)
            floor = stands_floor(standing, threshold)
            floored = floor > fused
            score = max(fused, floor)
    label = "anomalous" if score >= threshold else "normal"
    disputed = (reading is not None and model_label in ("normal", "anomalous")
                and (reading >= threshold) != (model_label == "anomalous"))
    return FusionResult(
        score=score, label=label, terms=tuple(terms), tools_score=tools_score, model=m_term,
        excluded=excluded, disagreements=_disagreements(best, model_label, p_normal, threshold, label),
        policy=policy, reading=reading, standing=standing, tool_terms=tuple(t_terms), anchored=anchored, stands=stands,
        floor=floor, floored=floored, disputed=disputed, threshold=threshold,
        model_label=model_label, p_normal=p_normal,
    )
