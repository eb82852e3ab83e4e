"""The survey's fused reading: one-sided, monotone, cites each tool's weight; the final fusion counts it once."""

from __future__ import annotations

import itertools

from agent.fusion import fuse
from agent.survey_fusion import SurveyTerm, fused_score, survey_evidence, survey_terms
from tools.types import Evidence


def _terms(pk: float, rd: float, pc: float, w: float = 0.5) -> list[SurveyTerm]:
    return [SurveyTerm("patch_knn", pk, 1.0, "base"), SurveyTerm("reference_diff", rd, w, "r"),
            SurveyTerm("parts_check", pc, w, "r")]


def test_other_tools_within_their_normal_range_change_nothing():
    assert fused_score(_terms(0.3, 0.1, 0.49)) == fused_score([SurveyTerm("patch_knn", 0.3, 1.0, "base")])


def test_a_tool_beyond_its_edge_raises_the_reading():
    plain = fused_score(_terms(0.3, 0.1, 0.1))
    assert fused_score(_terms(0.3, 0.95, 0.1)) > plain + 0.1


def test_fused_score_is_monotone_in_every_tool():
    grid = [0.01, 0.2, 0.45, 0.5, 0.55, 0.8, 0.99]
    for pk, rd, pc in itertools.product(grid, repeat=3):
        base = fused_score(_terms(pk, rd, pc))
        for bump in (0.001, 0.1):
            assert fused_score(_terms(min(pk + bump, 1.0), rd, pc)) >= base
            assert fused_score(_terms(pk, min(rd + bump, 1.0), pc)) >= base
            assert fused_score(_terms(pk, rd, min(pc + bump, 1.0))) >= base


def test_other_tools_do_not_count_with_a_single_reference():
    ev = [Evidence(tool="patch_knn", score=0.2), Evidence(tool="parts_check", score=0.99)]
    one = survey_evidence(ev, "query", 1, {"parts_check": 0.5})
    four = survey_evidence(ev, "query", 4, {"parts_check": 0.5})
    assert four.score > one.score
    assert "single reference" in one.summary


def test_scores_that_round_to_one_keep_their_order():
    strong = [SurveyTerm("patch_knn", 1.0, 1.0, "base", 60.0)]
    stronger = [SurveyTerm("patch_knn", 1.0, 1.0, "base", 80.0)]
    assert fused_score(strong) < fused_score(stronger) < 1.0


def test_a_failed_tool_is_listed_not_counted():
    ev = [Evidence(tool="patch_knn", score=0.2, args={"image_id": "query", "stage": "survey"}),
          Evidence(tool="reference_diff", error="boom", args={"image_id": "query", "stage": "survey"})]
    assert [t.tool for t in survey_terms(ev)] == ["patch_knn"]
    survey = survey_evidence(ev, "query")
    assert survey.score == fused_score(survey_terms(ev))
    assert "reference_diff failed (boom)" in survey.summary


def test_final_fusion_counts_the_survey_reading_once():
    parts = [Evidence(tool="patch_knn", score=0.3, args={"image_id": "query", "stage": "survey"}),
             Evidence(tool="reference_diff", score=0.97, args={"image_id": "query", "stage": "survey"}),
             Evidence(tool="parts_check", score=0.05, args={"image_id": "query", "stage": "survey"})]
    survey = survey_evidence(parts, "query", 4, {"reference_diff": 0.5, "parts_check": 0.5})
    result = fuse([*parts, survey])
    assert [t.source for t in result.terms] == ["survey"]
    assert abs(result.score - survey.score) < 1e-9
    assert "beyond its edge" in survey.summary and "weight 0.5" in survey.summary


def _scale(tool: str, raw: float, normal: list[float], how: str = "leave-one-out") -> Evidence:
    from tools.patch_knn import calibrate_edge

    cal = calibrate_edge(normal, how)
    return Evidence(tool=tool, score=cal(raw), raw_score=raw, log_odds=cal.log_odds(raw), calibration=how,
                    reference_scores=normal, args={"image_id": "query", "stage": "survey"})


def test_two_scales_sum_their_raw_scores_and_calibrate_on_the_references_sums():
    from agent.survey_fusion import SCALE_EDGE, SCALES_TOOL
    from tools.patch_knn import calibrate_edge

    pk = _scale("patch_knn", 1.30, [0.9, 1.0, 1.1, 1.0])
    fine = _scale("patch_knn_fine", 0.95, [1.0, 1.0, 0.9, 1.1])
    terms = survey_terms([pk, fine])
    assert [t.tool for t in terms] == [SCALES_TOOL]
    cal = calibrate_edge([1.9, 2.0, 2.0, 2.1], "leave-one-out", SCALE_EDGE["leave-one-out"])
    assert terms[0].score == cal(2.25) and terms[0].ratio == 2.25 / 2.0
    survey = survey_evidence([pk, fine], "query", 4)
    assert survey.raw_score == 2.25 and survey.reference_scores == [1.9, 2.0, 2.0, 2.1]
    assert survey.normal_ratio == 2.25 / 2.0 and survey.calibration == "leave-one-out"
    assert "patch_knn and patch_knn_fine summed" in survey.summary and "1.12x the references' own" in survey.summary
    # the reading rises with either scale's raw score
    higher = survey_evidence([pk, _scale("patch_knn_fine", 1.2, [1.0, 1.0, 0.9, 1.1])], "query", 4)
    assert higher.score > survey.score
    # the map and regions stay patch_knn's
    assert survey.map_path == pk.map_path


def test_two_scales_not_calibrated_alike_fall_back_to_patch_knn_alone():
    pk = _scale("patch_knn", 1.30, [0.9, 1.0, 1.1, 1.0])
    single = _scale("patch_knn_fine", 0.95, [1.0, 1.0, 0.9], "augmented copies")
    terms = survey_terms([pk, single])
    assert [(t.tool, t.weight) for t in terms] == [("patch_knn", 1.0), ("patch_knn_fine", 0.0)]
    survey = survey_evidence([pk, single], "query", 4)
    assert survey.score == fused_score([SurveyTerm("patch_knn", pk.score, 1.0, "base", pk.log_odds)])
    assert survey.normal_ratio is None and "not counted without patch_knn's scale" in survey.summary


def test_the_survey_fuses_the_scales_scores_without_the_hard_normals_as_it_fuses_their_own():
    from tools.types import HardNormals

    refs = [0.9, 1.0, 1.1, 1.0]
    pk, fine = _scale("patch_knn", 1.10, refs), _scale("patch_knn_fine", 1.05, refs)
    assert survey_evidence([pk, fine], "query", 5).hard_normals is None
    # what the two scales alone would read without the hard normals: the survey of exactly those readings
    pk_alone, fine_alone = _scale("patch_knn", 1.60, refs), _scale("patch_knn_fine", 1.40, refs)
    pk.hard_normals = HardNormals(n=1, raw_without=1.60, score_without=pk_alone.score, reference_scores_without=refs)
    fine.hard_normals = HardNormals(n=1, raw_without=1.40, score_without=fine_alone.score,
                                    reference_scores_without=refs)
    survey = survey_evidence([pk, fine], "query", 5)
    alone = survey_evidence([pk_alone, fine_alone], "query", 4)
    assert survey.hard_normals is not None and survey.hard_normals.n == 1
    assert survey.hard_normals.score_without == alone.score and survey.hard_normals.raw_without == alone.raw_score
    assert survey.hard_normals.score_without > survey.score
    assert f"the reading would be {alone.score:.2f}" in survey.summary


def test_the_explanation_says_when_only_hard_normals_make_a_verdict_normal():
    from agent.explain import hard_normal_note
    from tools.types import HardNormals

    survey = Evidence(tool="survey", score=0.3,
                      hard_normals=HardNormals(n=2, raw_without=2.6, score_without=0.8))
    note = hard_normal_note([survey], "normal", 0.5, ["abc123", "def456"])
    assert note.startswith("Normal because of the inspector's feedback: without the 2 image(s) marked as false "
                           "alarms (abc123, def456)")
    assert "would be 0.80, anomalous at threshold 0.50" in note and "memory remove" in note
    assert hard_normal_note([survey], "anomalous", 0.5, []) == ""  # flagged anyway
    assert hard_normal_note([survey], "normal", 0.85, []) == ""  # normal without them too
    assert hard_normal_note([Evidence(tool="survey", score=0.3)], "normal", 0.5, []) == ""
