"""The survey's fused reading: one score from the complementary evidence tools, before any model speaks.

Each evidence tool measures a different kind of anomaly, each calibrated on the normal references
(0.5 = at the edge of what they show): `patch_knn` local damage and texture, `reference_diff` what
differs from the aligned nearest reference (objects in a fixed pose), `parts_check` part counts and
composition. A defect seen by any of them is a defect, so the fusion is *one-sided*:

    L = x_patch_knn + sum_i w_i * max(0, b(logit s_i))          fused = sigmoid(S * asinh(L / S))

- ``x_patch_knn`` is patch_knn's unbounded log-odds (`Evidence.log_odds`: its order is kept where the
  score itself rounds to 1.0);
- the sum runs over the other tools, each soft-bounded (``b(x) = S tanh(x / S)``, S = logit(0.99), as in
  `agent.fusion`): a tool below its own edge of normal adds nothing (its silence is no evidence against a
  defect another tool measures), one beyond its edge adds at most ``w_i * S``;
- ``S * asinh(L / S)`` is the identity near the edge and grows like a logarithm far from it, so fused
  scores never round to 1.0 and keep their order (AUROC), and ``L = 0`` stays at 0.5.

**Two scales.** When `patch_knn_fine` (patch_knn on unpooled features) scored too, the base reading is the
two scales' raw scores summed (each is "relative to the references' own", so they add like for like),
calibrated on the references' own sums (the same references held out in both): its edge of normal is
`SCALE_EDGE` times their median. The base term is then named ``patch_knn+patch_knn_fine``; the map and
regions are patch_knn's unless only the unpooled scale sees a defect (`scales_lead`). Chosen by
leave-category-out (README, "The survey's defaults").

The fused score is non-decreasing in every tool's score, strictly increasing in patch_knn's, and equals
patch_knn's own reading (up to the asinh map) when no other tool flags. Weights are chosen by
leave-category-out on the realsets dev folds and the synthetic set (`evals.bench.lco_protocol`), from a
grid declared there; each weight's reason is recorded in the survey evidence. A tool that failed is
listed and not counted.

**Hard normals.** When false alarms the inspector marked normal widen the references' bank, each scale also
reports its score without them (`Evidence.hard_normals`); the survey fuses those the same way
(`without_hard_normals`), so the verdict can say when it is normal only because of that feedback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.fusion import _logit, to_score
from tools.calibration import Calibrator
from tools.types import Evidence, HardNormals

BASE_TOOL = "patch_knn"
FINE_TOOL = "patch_knn_fine"  # the second scale, summed into the base reading
SCALES_TOOL = f"{BASE_TOOL}+{FINE_TOOL}"  # the base term's name when both scales count
SURVEY_TOOL = "survey"  # the fused reading's name in the evidence
# the two scales' edge of normal, times the median of the references' own summed scores, per calibration
SCALE_EDGE = {"leave-one-out": 1.10, "augmented copies": 1.8}
# the other tools' default weights. None is adopted: by leave-category-out on fold dev (evals.bench.lco_protocol,
# README) the best fast candidate, parts_check at 0.25, moved the mean image AUROC by -0.002 and board (k = 4)
# by -0.037, and reference_diff is ~10x patch_knn's time per image (beyond 3x a plain PatchCore). Users opt in
# with the `survey_weights` setting.
SURVEY_WEIGHTS: dict[str, float] = {}
# the other tools count only with k >= 2 references: one reference cannot show a tool's own variation
MIN_REFERENCES_FOR_OTHERS = 2


@dataclass(frozen=True)
class SurveyTerm:
    """One tool's part in the survey's fused reading.

    Attributes:
        tool: the tool's name.
        score: its calibrated score on the query (0.5 = the references' edge of normal).
        weight: its weight in the fusion (the base tool counts fully, 1.0).
        reason: why it has that weight (cited in the evidence).
        log_odds: its unbounded log-odds when the tool reports them (else from `score`).
        ratio: its raw score / the references' typical own (the two scales: their sums'), or None.
        detail: what the summary says of it besides its score (the two scales: the ratio and each scale alone).
    """

    tool: str
    score: float
    weight: float
    reason: str
    log_odds: float | None = None
    ratio: float | None = None
    detail: str = ""

    @property
    def base(self) -> bool:
        """The base reading (patch_knn, or the two scales summed): counted fully and both ways."""
        return self.tool in (BASE_TOOL, SCALES_TOOL)

    @property
    def contribution(self) -> float:
        """Log-odds it adds to the fused reading (the base tool: its own, unbounded)."""
        if self.base:
            return self.log_odds if self.log_odds is not None else math.log(
                max(self.score, 1e-15) / max(1.0 - self.score, 1e-15))
        return self.weight * max(0.0, _logit(self.score))


def fused_score(terms: list[SurveyTerm]) -> float:
    """The one-sided fusion of the module docstring; without a base term, the others' largest log-odds."""
    if not terms:
        msg = "nothing to fuse: no survey tool produced a score"
        raise ValueError(msg)
    if any(t.base for t in terms):
        return to_score(sum(t.contribution for t in terms))
    weighted = [t for t in terms if t.weight > 0]
    return to_score(max(_logit(t.score) for t in weighted)) if weighted else 0.5


def survey_weight(tool: str, n_references: int, weights: dict[str, float] | None = None) -> tuple[float, str]:
    """A tool's weight for this reference set and the reason (sentence)."""
    if tool == BASE_TOOL:
        return 1.0, "the base reading (patch kNN against every reference patch)"
    w = (SURVEY_WEIGHTS if weights is None else weights).get(tool, 0.0)
    if w <= 0:
        return 0.0, "not counted in the survey"
    if n_references < MIN_REFERENCES_FOR_OTHERS:
        return 0.0, "not counted with a single reference (one reference cannot show its own variation)"
    return w, f"adds {w:g} x its log-odds when it is beyond its own edge of normal"


def describe(terms: list[SurveyTerm], score: float) -> str:
    """One sentence: the fused reading and each tool's part."""
    parts = []
    for t in terms:
        if t.tool == SCALES_TOOL:
            parts.append(f"{BASE_TOOL} and {FINE_TOOL} summed {t.score:.2f} ({t.detail})")
        elif t.base:
            parts.append(f"{t.tool} {t.score:.2f}")
        elif t.weight <= 0:
            parts.append(f"{t.tool} {t.score:.2f} (not counted: {t.reason})")
        elif t.score <= 0.5:
            parts.append(f"{t.tool} {t.score:.2f} (within its normal range: adds nothing)")
        else:
            parts.append(f"{t.tool} {t.score:.2f} (beyond its edge: adds {t.contribution:.2f} log-odds, weight {t.weight:g})")
    return f"Survey reading {score:.2f} from " + ", ".join(parts) + "."


def scales_reading(base: Evidence, fine: Evidence) -> tuple[float, list[float], Calibrator] | None:
    """(the two scales' raw scores summed, the references' own sums, the calibrator fitted on them with
    `SCALE_EDGE`); None when the two were not calibrated on the same references the same way."""
    from tools.patch_knn import calibrate_edge

    if (base.raw_score is None or fine.raw_score is None or base.calibration != fine.calibration
            or base.calibration not in SCALE_EDGE or not base.reference_scores
            or len(base.reference_scores) != len(fine.reference_scores)):
        return None
    normal = [a + b for a, b in zip(base.reference_scores, fine.reference_scores, strict=True)]
    return base.raw_score + fine.raw_score, normal, calibrate_edge(normal, base.calibration,
                                                                   SCALE_EDGE[base.calibration])


def scales_term(base: Evidence, fine: Evidence) -> SurveyTerm | None:
    """The two scales' base term (`scales_reading`), or None."""
    reading = scales_reading(base, fine)
    if reading is None:
        return None
    raw, _, cal = reading
    ratio = raw / cal.center if cal.center > 0 else None
    said = f"{ratio:.2f}x the references' own" if ratio is not None else f"raw {raw:.3g}"
    detail = (f"{said}, {SCALE_EDGE[base.calibration]:g}x at the edge; {BASE_TOOL} {base.score:.2f} and "
              f"{FINE_TOOL} {fine.score:.2f} alone")
    return SurveyTerm(SCALES_TOOL, cal(raw), 1.0, "the base reading: both scales' raw scores summed, "
                      "calibrated on the references' own sums", cal.log_odds(raw), ratio, detail)


def scales_lead(base_score: float, fine_score: float) -> str:
    """Whose map and regions the two scales' reading shows, from each scale's own calibrated score: patch_knn's,
    unless patch_knn alone is within its normal range and patch_knn_fine alone is beyond its edge (a defect only
    the unpooled features see). Chosen on fold dev by pixel AUROC: the scale with the higher score every time
    cost magnetic_tile 0.03."""
    return FINE_TOOL if float(base_score) < 0.5 <= float(fine_score) else BASE_TOOL


def survey_terms(evidence: list[Evidence], n_references: int = 2,
                 weights: dict[str, float] | None = None) -> list[SurveyTerm]:
    """One term per survey tool that scored (failed tools are left out; their evidence says why); patch_knn
    and patch_knn_fine become one base term (`scales_term`) when both scored."""
    scored = {ev.tool: ev for ev in evidence if ev.score is not None and not ev.error and ev.tool != SURVEY_TOOL}
    both = scales_term(scored[BASE_TOOL], scored[FINE_TOOL]) if {BASE_TOOL, FINE_TOOL} <= set(scored) else None
    terms = [both] if both is not None else []
    for ev in scored.values():
        if both is not None and ev.tool in (BASE_TOOL, FINE_TOOL):
            continue
        if ev.tool == FINE_TOOL:
            terms.append(SurveyTerm(FINE_TOOL, float(ev.score), 0.0, "not counted without patch_knn's scale "
                                    "calibrated the same way", ev.log_odds))
            continue
        weight, reason = survey_weight(ev.tool, n_references, weights)
        terms.append(SurveyTerm(ev.tool, float(ev.score), weight, reason, ev.log_odds))
    return terms


def survey_evidence(evidence: list[Evidence], query_id: str, n_references: int = 2,
                    weights: dict[str, float] | None = None) -> Evidence:
    """The survey's fused reading as one `Evidence` (tool "survey"): its score, the regions and map of the
    tool that adds the most, and a summary citing every tool's part and weight."""
    terms = survey_terms(evidence, n_references, weights)
    score = fused_score(terms)
    counted = [t for t in terms if t.base or (t.weight > 0 and t.score > 0.5)]
    lead = max(counted, key=lambda t: t.contribution, default=None)
    lead_tool = lead.tool if lead else None
    by_tool = {ev.tool: ev for ev in evidence}
    if lead_tool == SCALES_TOOL:
        lead_tool = scales_lead(by_tool[BASE_TOOL].score, by_tool[FINE_TOOL].score)
    lead_ev = next((ev for ev in evidence if ev.tool == lead_tool), None)
    failed = [f"{ev.tool} failed ({ev.error}) and is not counted" for ev in evidence if ev.error]
    weights = "; ".join(f"{t.tool}: weight {t.weight:g}, {t.reason}" for t in terms)
    summary = " ".join([describe(terms, score), f"Weights: {weights}.", *(f + "." for f in failed)])
    scales = {}  # the two scales' reading in the survey's evidence: raw, ratio and what calibrated it
    if any(t.tool == SCALES_TOOL for t in terms):
        raw, normal, _ = scales_reading(by_tool[BASE_TOOL], by_tool[FINE_TOOL])
        scales = {"raw_score": raw, "normal_ratio": next(t.ratio for t in terms if t.tool == SCALES_TOOL),
                  "calibration": by_tool[BASE_TOOL].calibration, "reference_scores": normal}
    hard = without_hard_normals(evidence, n_references, weights)
    if hard is not None:
        summary += (f" Without the {hard.n} reference(s) the inspector marked as false alarms the reading would be "
                    f"{hard.score_without:.2f}.")
    return Evidence(
        tool=SURVEY_TOOL, args={"image_id": query_id, "tools": [ev.tool for ev in evidence]},
        score=score, regions=list(lead_ev.regions) if lead_ev else [], summary=summary,
        map_path=lead_ev.map_path if lead_ev else None, hard_normals=hard,
        elapsed_ms=sum(ev.elapsed_ms for ev in evidence), **scales,
    )


def without_hard_normals(evidence: list[Evidence], n_references: int = 2,
                         weights: dict[str, float] | None = None) -> HardNormals | None:
    """The survey's reading had the hard normals not widened the bank: each tool that reported its score
    without them (`Evidence.hard_normals`) counts with that score, fused as `survey_evidence` fuses; None when
    no tool did."""
    hard = [ev.hard_normals for ev in evidence if ev.hard_normals is not None and not ev.error]
    if not hard:
        return None
    n = max(h.n for h in hard)
    others = [ev.model_copy(update={"raw_score": h.raw_without, "score": h.score_without, "log_odds": None,
                                    "reference_scores": h.reference_scores_without, "hard_normals": None})
              if (h := ev.hard_normals) is not None else ev for ev in evidence]
    terms = survey_terms(others, max(n_references - n, 1), weights)
    by_tool = {ev.tool: ev for ev in others}
    reading = (scales_reading(by_tool[BASE_TOOL], by_tool[FINE_TOOL])
               if any(t.tool == SCALES_TOOL for t in terms) else None)
    base = by_tool[BASE_TOOL]  # hard normals are patch_knn's: the base scale is there
    raw, normal = (reading[0], reading[1]) if reading else (base.raw_score, base.reference_scores)
    return HardNormals(n=n, raw_without=float(raw), score_without=fused_score(terms),
                       reference_scores_without=[float(v) for v in normal])
