"""Fusion: the documented formula, monotonic, no ties, label from the threshold only."""

from __future__ import annotations

import math

import pytest

from agent.fusion import LOGIT_BOUND, fuse, model_term, tool_terms
from tools.types import Evidence


def ev(tool, score, error=None):
    return Evidence(tool=tool, score=score, summary="", error=error)


def test_single_tool_is_monotonic_without_ties():
    scores = [0.001, 0.2, 0.5, 0.8, 0.99, 0.999, 0.9999999]
    fused = [fuse([ev("patch_knn", s)]).score for s in scores]
    assert fused == sorted(fused) and len(set(fused)) == len(fused)
    assert fuse([ev("patch_knn", 0.5)]).score == pytest.approx(0.5)
    assert all(0.0 < f < 1.0 for f in fused)


def _bound(p):
    return LOGIT_BOUND * math.tanh(math.log(p / (1 - p)) / LOGIT_BOUND)


def test_weighted_log_odds_formula():
    """model-decides: the plain weighted fusion of every term."""
    result = fuse([ev("patch_knn", 0.9), ev("clip_similarity", 0.3)], "anomalous", 0.7, policy="model-decides")
    expected = (1.0 * _bound(0.9) + 0.6 * _bound(0.3) + 1.0 * _bound(0.7)) / 2.6
    assert result.score == pytest.approx(1 / (1 + math.exp(-expected)))
    assert [t.source for t in result.terms] == ["patch_knn", "clip_similarity", "model"]


def test_evidence_stands_formula():
    """evidence-stands: the measured reading (patch_knn anchors it; clip 0.3 cannot lower it) with the model."""
    result = fuse([ev("patch_knn", 0.9), ev("clip_similarity", 0.3)], "anomalous", 0.7)
    assert result.reading == pytest.approx(0.9) and result.anchored
    expected = (_bound(0.9) + _bound(0.7)) / 2
    assert result.score == pytest.approx(1 / (1 + math.exp(-expected)))
    assert [t.source for t in result.terms] == ["measured reading", "model"]
    assert result.policy == "evidence-stands" and not result.disputed


def test_best_score_per_tool_and_errors_ignored():
    terms = tool_terms([ev("zoom", None), ev("patch_knn", 0.2), ev("patch_knn", 0.7), ev("parts_check", None, "failed")])
    assert [(t.source, t.probability) for t in terms] == [("patch_knn", 0.7)]


def test_label_without_probabilities_counts_less():
    assert model_term("anomalous", None).weight < model_term("anomalous", 0.85).weight
    assert model_term("uncertain", None).probability == 0.5


def test_threshold_decides_the_label():
    assert fuse([ev("patch_knn", 0.6)], threshold=0.7).label == "normal"
    assert fuse([ev("patch_knn", 0.6)], threshold=0.5).label == "anomalous"


def test_nothing_to_fuse():
    with pytest.raises(ValueError, match="nothing to fuse"):
        fuse([ev("zoom", None)])
