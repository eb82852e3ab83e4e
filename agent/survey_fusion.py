"""The survey's fused reading: one score from the complementary evidence tools, before any model speaks.

Each evidence tool measures a different kind of anomaly, each calibrated on the normal references
(0.5 = at the edge of what they show): `patch_knn` local damage and texture, `reference_diff` what
differs from the aligned nearest reference (objects in a fixed pose), `parts_check` part counts and
composition. A defect seen by any of them is a defect, so the fusion is *one-sided*:

    L = b(logit s_patch_knn) + sum_i w_i * max(0, b(logit s_i))        fused = sigmoid(L)

where ``b(x) = L_max * tanh(x / L_max)`` is the soft bound of `agent.fusion` and the sum runs over the
other tools. A tool below its own edge of normal adds nothing (its silence is no evidence against a
defect another tool measures), and one beyond its edge adds its weighted log-odds. The fused score is
non-decreasing in every tool's score, and equals patch_knn's alone when no other tool flags.

Weights are set per reference set, from the references alone (`survey_weights`), and each weight's
reason is recorded in the survey evidence. A tool that failed, or whose weight is 0, is listed but not
counted. The rule and its weights were chosen by leave-category-out on the realsets dev folds and the
synthetic set (`evals.bench.lco_protocol`).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.fusion import LOGIT_BOUND, _logit, _sigmoid
from tools.types import Evidence

BASE_TOOL = "patch_knn"
SURVEY_TOOL = "survey"  # the fused reading's name in the evidence
# the other tools' weights (chosen by leave-category-out on fold dev, see evals.bench.lco_protocol)
SURVEY_WEIGHTS: dict[str, float] = {"reference_diff": 0.5, "parts_check": 0.5}


@dataclass(frozen=True)
class SurveyTerm:
    """One tool's part in the survey's fused reading.

    Attributes:
        tool: the tool's name.
        score: its calibrated score on the query (0.5 = the references' edge of normal).
        weight: its weight in the fusion (the base tool counts fully, 1.0).
        reason: why it has that weight (cited in the evidence).
    """

    tool: str
    score: float
    weight: float
    reason: str

    @property
    def contribution(self) -> float:
        """Log-odds it adds to the fused reading (the base tool: its bounded log-odds)."""
        logit = _logit(self.score)
        if self.tool == BASE_TOOL:
            return logit
        return self.weight * max(0.0, logit)


def fused_score(terms: list[SurveyTerm]) -> float:
    """sigmoid(base log-odds + the others' weighted log-odds beyond their edge); no base: the others alone."""
    if not terms:
        msg = "nothing to fuse: no survey tool produced a score"
        raise ValueError(msg)
    has_base = any(t.tool == BASE_TOOL for t in terms)
    total = sum(t.contribution for t in terms)
    if not has_base:  # without patch_knn the others stand on their own (their own log-odds)
        weighted = [t for t in terms if t.weight > 0]
        if not weighted:
            return 0.5
        total = max(_logit(t.score) for t in weighted)
    return _sigmoid(min(total, 2 * LOGIT_BOUND))


def survey_weight(tool: str) -> tuple[float, str]:
    """A tool's weight for this reference set and the reason (sentence)."""
    if tool == BASE_TOOL:
        return 1.0, "the base reading (patch kNN against every reference patch)"
    w = SURVEY_WEIGHTS.get(tool, 0.0)
    if w <= 0:
        return 0.0, "not counted in the survey"
    return w, f"adds {w:g} x its log-odds when it is beyond its own edge of normal"


def describe(terms: list[SurveyTerm], score: float) -> str:
    """One sentence: the fused reading and each tool's part."""
    parts = []
    for t in terms:
        if t.tool == BASE_TOOL:
            parts.append(f"{t.tool} {t.score:.2f}")
        elif t.weight <= 0:
            parts.append(f"{t.tool} {t.score:.2f} (not counted: {t.reason})")
        elif t.score <= 0.5:
            parts.append(f"{t.tool} {t.score:.2f} (within its normal range: adds nothing)")
        else:
            parts.append(f"{t.tool} {t.score:.2f} (beyond its edge: adds {t.contribution:.2f} log-odds, weight {t.weight:g})")
    return f"Survey reading {score:.2f} from " + ", ".join(parts) + "."


def survey_terms(evidence: list[Evidence]) -> list[SurveyTerm]:
    """One term per survey tool that scored (failed tools are left out; their evidence says why)."""
    terms = []
    for ev in evidence:
        if ev.score is None or ev.error or ev.tool == SURVEY_TOOL:
            continue
        weight, reason = survey_weight(ev.tool)
        terms.append(SurveyTerm(ev.tool, float(ev.score), weight, reason))
    return terms


def survey_evidence(evidence: list[Evidence], query_id: str) -> Evidence:
    """The survey's fused reading as one `Evidence` (tool "survey"): its score, the regions and map of the
    tool that adds the most, and a summary citing every tool's part and weight."""
    terms = survey_terms(evidence)
    score = fused_score(terms)
    counted = [t for t in terms if t.tool == BASE_TOOL or (t.weight > 0 and t.score > 0.5)]
    lead = max(counted, key=lambda t: t.contribution if t.tool != BASE_TOOL else t.contribution, default=None)
    lead_ev = next((ev for ev in evidence if lead is not None and ev.tool == lead.tool), None)
    failed = [f"{ev.tool} failed ({ev.error}) and is not counted" for ev in evidence if ev.error]
    weights = "; ".join(f"{t.tool}: weight {t.weight:g}, {t.reason}" for t in terms)
    summary = " ".join([describe(terms, score), f"Weights: {weights}.", *(f + "." for f in failed)])
    return Evidence(
        tool=SURVEY_TOOL, args={"image_id": query_id, "tools": [ev.tool for ev in evidence]},
        score=score, regions=list(lead_ev.regions) if lead_ev else [], summary=summary,
        map_path=lead_ev.map_path if lead_ev else None,
        elapsed_ms=sum(ev.elapsed_ms for ev in evidence),
    )
