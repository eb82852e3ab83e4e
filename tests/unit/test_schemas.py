"""Core types round-trip through JSON and refuse inconsistent states."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.schemas import Evidence, Query, Region, Usage, Verdict


def _verdict() -> Verdict:
    ev = Evidence(tool="patch_knn", args={"image_id": "query"}, score=0.9, raw_score=3.2,
                  regions=[Region(bbox_xyxy=(1, 2, 30, 40), score=0.8, label="peak")],
                  summary="patch_knn: 0.90", elapsed_ms=12.5)
    return Verdict(image="a.png", category="tile", pred_label="anomalous", pred_score=0.91,
                   regions=ev.regions, explanation="patch_knn scored 0.90 at (1,2,30,40).",
                   evidence=[ev], usage=Usage(model_calls=2, tool_calls=1), timings={"total_ms": 40.0})


def test_round_trips():
    v = _verdict()
    assert Verdict.model_validate_json(v.model_dump_json()) == v
    q = Query(image="a.png", category="tile", references=["r1.png", "r2.png"])
    assert Query.model_validate_json(q.model_dump_json()) == q


def test_ok_verdict_needs_explanation_and_score():
    with pytest.raises(ValidationError, match="explanation"):
        Verdict(image="a", pred_label="normal", pred_score=0.1, explanation=" ")
    with pytest.raises(ValidationError):
        Verdict(image="a", pred_label="normal", pred_score=1.5, explanation="x")


def test_error_verdict():
    v = Verdict.failed("bad.png", "bad.png: not an image. Fix: ...")
    assert v.status == "error" and v.pred_label is None
    assert Verdict.model_validate_json(v.model_dump_json()) == v
    with pytest.raises(ValidationError, match="reason"):
        Verdict(image="a", status="error")


def test_region_box_order():
    with pytest.raises(ValidationError):
        Region(bbox_xyxy=(10, 0, 5, 5))
