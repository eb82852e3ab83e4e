"""Fuse the model's P(anomalous) and the tools' calibrated scores into one score in [0, 1].

The formula (a weighted mean in log-odds, i.e. a logistic combination with fixed weights):

    pred_score = sigmoid( sum_i w_i * logit(clip(s_i)) / sum_i w_i )

- ``s_i`` are calibrated scores in [0, 1] (0.5 = at the edge of what the normal references show).
  Their log-odds are soft-bounded, ``logit -> L * tanh(logit / L)`` with ``L = logit(0.99)``, so one
  saturated source cannot veto the others, while the map stays strictly increasing: no two different
  scores tie, and rankings (AUROC) are kept.
- Weights (fixed, not fitted on any test data):
  - the model with token log-probabilities: 1.0 (it sees the whole image and reasons about logic);
  - the model's label only (no probabilities): 0.5, with the label mapped to 0.85 / 0.15 ("uncertain" = 0.5),
    because a hard label carries less information than a probability;
  - ``patch_knn``: 1.0 (PatchCore-style evidence, the strongest surface-defect measure);
  - ``parts_check``: 0.8 (logical anomalies); ``clip_similarity``: 0.6 (zero-shot, noisier);
  - ``reference_diff``: 0.5 (alignment-sensitive); any other scoring tool: 0.5.
- A tool called several times (e.g. on zooms) contributes its highest score once: a defect seen anywhere counts.
- The label is ``anomalous`` iff ``pred_score >= threshold`` (default 0.5), never parsed from text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tools.types import Evidence

TOOL_WEIGHTS: dict[str, float] = {
    "patch_knn": 1.0,
    "parts_check": 0.8,
    "clip_similarity": 0.6,
    "reference_diff": 0.5,
}
DEFAULT_TOOL_WEIGHT = 0.5
MODEL_WEIGHT_LOGPROBS = 1.0
MODEL_WEIGHT_LABEL = 0.5
LABEL_PROBABILITY = {"anomalous": 0.85, "normal": 0.15, "uncertain": 0.5}
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
class FusionResult:
    score: float
    label: str
    terms: tuple[FusionTerm, ...]

    def describe(self) -> str:
        parts = ", ".join(f"{t.source} {t.probability:.2f} (w {t.weight:g})" for t in self.terms)
        return f"fused score {self.score:.2f} from {parts}"


def tool_terms(evidence: list[Evidence]) -> list[FusionTerm]:
    """One term per scoring tool (its highest calibrated score), in first-seen order."""
    best: dict[str, float] = {}
    for ev in evidence:
        if ev.score is None or ev.error:
            continue
        best[ev.tool] = max(best.get(ev.tool, 0.0), float(ev.score))
    return [FusionTerm(tool, p, TOOL_WEIGHTS.get(tool, DEFAULT_TOOL_WEIGHT)) for tool, p in best.items()]


def model_term(label: str | None, probability: float | None) -> FusionTerm | None:
    """The model's term: its P(anomalous) from log-probabilities, else its label."""
    if probability is not None:
        return FusionTerm("model", float(probability), MODEL_WEIGHT_LOGPROBS)
    if label is not None:
        return FusionTerm("model label", LABEL_PROBABILITY[label], MODEL_WEIGHT_LABEL)
    return None


def fuse(evidence: list[Evidence], model_label: str | None = None,
         model_probability: float | None = None, threshold: float = 0.5) -> FusionResult:
    """Combine tool evidence and the model's answer by the module's formula.

    Raises:
        ValueError: when there is nothing to fuse (no scoring tool and no model answer).
    """
    terms = tool_terms(evidence)
    term = model_term(model_label, model_probability)
    if term is not None:
        terms.append(term)
    if not terms:
        msg = "nothing to fuse: no tool produced a score and no model answered"
        raise ValueError(msg)
    total = sum(t.weight for t in terms)
    score = _sigmoid(sum(t.weight * _logit(t.probability) for t in terms) / total)
    label = "anomalous" if score >= threshold else "normal"
    return FusionResult(score=score, label=label, terms=tuple(terms))
