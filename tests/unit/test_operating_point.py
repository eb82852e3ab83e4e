"""The per-category operating point: a prior toward the edge, bounded steps, exact undo."""

from __future__ import annotations

import math

from memory.operating_point import (
    MAX_STEP,
    MIN_THRESHOLD,
    OperatingPoints,
    ThresholdPolicy,
    describe_move,
    fit_threshold,
    next_threshold,
)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_no_labels_is_the_default_threshold(tmp_path):
    point = OperatingPoints(tmp_path / "op.json").get("gasket")
    assert point.threshold == 0.5 and not point.refit


def test_false_alarms_raise_and_misses_lower_the_threshold(tmp_path):
    ops = OperatingPoints(tmp_path / "op.json")
    for i in range(6):
        ops.add("gasket", f"n{i}", "normal", 0.7)
    assert ops.get("gasket").threshold > 0.7
    ops2 = OperatingPoints(tmp_path / "op2.json")
    for i in range(6):
        ops2.add("gasket", f"a{i}", "anomalous", 0.3)
    assert ops2.get("gasket").threshold < 0.3


def test_one_label_moves_the_threshold_by_a_bounded_step(tmp_path):
    ops = OperatingPoints(tmp_path / "op.json")
    before, after = ops.add("gasket", "x", "normal", 0.9999)
    assert abs(_logit(after.threshold) - _logit(before.threshold)) <= MAX_STEP + 1e-9
    assert after.history[-1]["from"] == round(before.threshold, 4)


def test_a_label_never_moves_the_line_against_its_own_side():
    """Three false alarms leave the line short of its fit (bounded steps); a miss that follows must not finish
    that climb: the inspector said the line is too high there, so it falls or stays, never rises."""
    alarms = [("normal", 0.99)] * 3
    line = 0.5
    for i in range(len(alarms)):
        line = next_threshold(line, alarms[: i + 1])
    assert line < fit_threshold(alarms) - 0.05  # still climbing
    labels = [*alarms, ("anomalous", 0.04)]
    assert fit_threshold(labels) > line  # the fit still lies above: two-way, the miss raises the line
    assert next_threshold(line, labels, ThresholdPolicy(one_way=False)) > line
    assert next_threshold(line, labels) == line
    # the mirror case: two misses leave the line above its fit; a normal confirmed below the line never lowers it
    misses = [("anomalous", 0.15)] * 2
    line = 0.5
    for i in range(len(misses)):
        line = next_threshold(line, misses[: i + 1])
    labels = [*misses, ("normal", 0.05)]
    assert fit_threshold(labels) < line
    assert next_threshold(line, labels, ThresholdPolicy(one_way=False)) < line
    assert next_threshold(line, labels) == line


def test_the_message_says_why_a_miss_left_the_line_where_it_was(tmp_path):
    ops = OperatingPoints(tmp_path / "op.json")
    for i in range(3):
        ops.add("cell", f"n{i}", "normal", 0.99)
    before, after = ops.add("cell", "a", "anomalous", 0.04)
    assert after.threshold == before.threshold
    said = describe_move("cell", before, after, "anomalous")
    assert said.startswith(f"the 'cell' threshold stayed at {after.threshold:.2f}: the labels so far put it higher")
    assert "a missed defect never raises it" in said
    assert describe_move("cell", before, after) == f"the 'cell' threshold stayed at {after.threshold:.2f}"  # undo
    ops2 = OperatingPoints(tmp_path / "op2.json")
    for i in range(2):
        ops2.add("cell", f"a{i}", "anomalous", 0.15)
    before, after = ops2.add("cell", "n", "normal", 0.05)
    assert "a normal never lowers it" in describe_move("cell", before, after, "normal")


def test_removing_a_label_reverts_its_effect_exactly(tmp_path):
    ops = OperatingPoints(tmp_path / "op.json")
    ops.add("gasket", "a", "normal", 0.8)
    ops.add("gasket", "b", "anomalous", 0.45)
    kept = ops.get("gasket").threshold
    ops.add("gasket", "c", "normal", 0.9)
    assert ops.get("gasket").threshold != kept
    [(before, after)] = ops.remove("c")
    assert after.threshold == kept
    assert "moved" in describe_move("gasket", before, after)


def test_the_prior_holds_few_labels_near_the_edge():
    assert abs(fit_threshold([("anomalous", 0.45)]) - 0.5) < 0.2
    assert abs(fit_threshold([("normal", 0.55)], policy=ThresholdPolicy(normal_weight=1.0)) - 0.5) < 0.2
    assert fit_threshold([("normal", 0.55)] * 20) > 0.55


def test_a_false_alarm_weighs_more_than_a_miss():
    miss, alarm = fit_threshold([("anomalous", 0.3)]), fit_threshold([("normal", 0.7)])
    assert 0.5 - miss < alarm - 0.5  # the same distance from the edge, three times the pull


def test_misses_never_push_the_line_below_the_references_own_range(tmp_path):
    """Misses that score like the references themselves stop at the floor (one spread above their median)."""
    assert 0.11 < MIN_THRESHOLD < 0.13
    ops = OperatingPoints(tmp_path / "op.json")
    for i in range(30):
        ops.add("commutator", f"a{i}", "anomalous", 0.02)
    point = ops.get("commutator")
    assert abs(point.threshold - MIN_THRESHOLD) < 1e-9
    assert min(h["to"] for h in point.history) >= round(MIN_THRESHOLD, 4)
    unfloored = fit_threshold([("anomalous", 0.02)] * 30, policy=ThresholdPolicy(min_threshold=0.0))
    assert unfloored < 0.05  # the floor, not the prior, holds it
    assert fit_threshold([("anomalous", 0.3)] * 3) > MIN_THRESHOLD  # above the floor, labels still move it
    before, after = ops.add("commutator", "a-last", "anomalous", 0.02)
    assert describe_move("commutator", before, after) == (
        "the 'commutator' threshold stayed at 0.12, its floor: lower, it would flag images that score like the "
        "references themselves")
