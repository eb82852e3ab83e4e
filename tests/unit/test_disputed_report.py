"""Eval reports count disputed verdicts (issue 22): the model's label disagreed with the measured reading."""

from __future__ import annotations

import json

import pytest

from evals.report import Run, markdown_report
from evals.scoring import category_metrics, compute_metrics


def rec(category, gt, score, disputed, source="logprobs", image=None):
    return {"image": image or f"{category}-{gt}-{score}.png", "category": category, "repeat": 0, "gt_label": gt,
            "status": "ok", "pred_score": score, "pred_label": "anomalous" if score >= 0.5 else "normal",
            "threshold": 0.5, "disputed": disputed, "score_source": source, "config_hash": "h"}


def test_category_metrics_count_disputed_verdicts_among_those_with_a_model():
    recs = [rec("c", 1, 0.9, True), rec("c", 1, 0.8, False), rec("c", 0, 0.2, False), rec("c", 0, 0.6, True)]
    row = category_metrics(recs, pixel=False, n_boot=0)
    assert row["n_disputed"] == 2 and row["n_with_model"] == 4 and row["disputed_share"] == pytest.approx(0.5)


def test_tools_only_runs_have_no_disputed_count():
    row = category_metrics([rec("c", 1, 0.9, False, "tools"), rec("c", 0, 0.1, False, "tools")], pixel=False, n_boot=0)
    assert row["disputed_share"] is None and row["n_disputed"] is None


def test_the_report_shows_the_count_and_the_pooled_share(tmp_path):
    recs = [rec("a", 1, 0.9, True), rec("a", 0, 0.2, False),
            rec("b", 1, 0.9, False), rec("b", 0, 0.1, False), rec("b", 1, 0.7, False), rec("b", 0, 0.3, False)]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    metrics = compute_metrics(path, pixel=False, n_boot=0)
    assert metrics["mean"]["n_disputed"] == 1
    assert metrics["mean"]["disputed_share"] == pytest.approx(1 / 6)  # pooled, not the mean of 1/2 and 0
    text = markdown_report([Run(tmp_path, {}, metrics)])
    assert "Disputed" in text.splitlines()[2]
    assert "| 1 (50.0%) |" in text and "| 0 (0.0%) |" in text and "| 1 (16.7%) |" in text
