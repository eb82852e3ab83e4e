"""The threshold-policy replay: a feedback stream's fixed scores judged again with only the threshold refit."""

from __future__ import annotations

from evals.threshold_replay import policies, replay_stream, table
from memory.operating_point import SHIPPED_POLICY, ThresholdPolicy


def _row(truth: str, score: float | None, status: str = "ok") -> dict:
    """A stream row as judged without feedback (threshold 0.5)."""
    pred = None if score is None else ("anomalous" if score >= 0.5 else "normal")
    return {"image": "x.png", "truth": truth, "score": score, "status": status, "pred": pred,
            "wrong": pred != truth}


def test_missed_anomalies_lower_the_threshold_until_they_are_caught():
    rows = [_row("anomalous", 0.3)] * 6 + [_row("normal", 0.05)] * 2
    out = replay_stream(rows, SHIPPED_POLICY)
    assert out[0]["wrong"] and out[0]["threshold"] == 0.5
    assert not out[-3]["wrong"] and out[-3]["threshold"] <= 0.3  # caught once the line passed below 0.3
    assert all(not r["wrong"] for r in out[-2:])  # the normals far below stay normal


def test_a_failed_item_stays_wrong_and_moves_nothing():
    out = replay_stream([_row("anomalous", None, status="error"), _row("normal", 0.1)], SHIPPED_POLICY)
    assert out[0]["wrong"] and out[1]["threshold"] == 0.5


def test_a_heavier_false_alarm_cost_keeps_the_line_higher():
    rows = [_row("normal", 0.6), _row("anomalous", 0.2), _row("normal", 0.55), _row("anomalous", 0.25)] * 3
    light = replay_stream(rows, ThresholdPolicy(normal_weight=1.0))[-1]["threshold"]
    heavy = replay_stream(rows, ThresholdPolicy(normal_weight=5.0))[-1]["threshold"]
    assert heavy > light


def test_the_table_puts_the_shipped_policy_first_and_scores_every_category():
    runs = [{"category": c, "seed": s, "feedback": False,
             "rows": [_row("anomalous", 0.3), _row("normal", 0.1)] * 4} for c in ("a", "b") for s in (0, 1)]
    rows = table({"runs": runs + [{**runs[0], "feedback": True}]})
    assert len(rows) == len(policies()) and policies()[0] == SHIPPED_POLICY
    first = rows[0]
    assert (first["prior"], first["max_step"], first["normal_weight"]) == (0.5, 0.5, 3.0)
    assert {row["floor"] for row in rows} == {0.0, 0.119, 0.182, 0.269}
    assert set(first) >= {"a", "b", "error ratio (mean)", "max FPR", "recall kept"}
