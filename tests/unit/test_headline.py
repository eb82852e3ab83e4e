"""The explanation's first sentence: plain words for what, where, how sure and compared with what."""

from __future__ import annotations

from agent.explain import headline
from agent.fusion import fuse
from tools.types import Evidence, Region


def _ev(score: float, ratio: float, box=(150, 10, 190, 40)) -> Evidence:
    return Evidence(tool="patch_knn", score=score, raw_score=ratio, normal_ratio=ratio,
                    regions=[Region(bbox_xyxy=box, score=1.0)])


def test_an_anomaly_says_where_how_sure_and_against_what():
    ev = [_ev(0.99, 3.02)]
    text = headline(fuse(ev), ev, 0.5, width=200, height=200, n_references=4, category="gasket")
    assert text.startswith("Anomalous, clearly: the top-right area of the gasket differs from all 4 good references "
                           "three times as much as they differ from each other")
    assert "(score 0.99, threshold 0.50)" in text


def test_a_normal_image_says_it_is_within_the_references():
    ev = [_ev(0.05, 0.9)]
    text = headline(fuse(ev), ev, 0.5, width=200, height=200, n_references=1, category=None)
    assert text.startswith("Normal, clearly: the image is within what the good reference shows")
    # one reference has no "each other": its normal range comes from slightly moved copies of it
    assert "no more different than slightly moved copies of it are" in text
    ev = [_ev(0.05, 0.9)]
    text = headline(fuse(ev), ev, 0.5, width=200, height=200, n_references=3, category=None)
    assert text.startswith("Normal, clearly: the image is within what all 3 good references show, "
                           "no more different than they are from each other")


def test_one_reference_an_anomaly_is_compared_with_copies_of_it():
    ev = [_ev(0.99, 3.02)]
    text = headline(fuse(ev), ev, 0.5, width=200, height=200, n_references=1, category="gasket")
    assert text.startswith("Anomalous, clearly: the top-right area of the gasket differs from the good reference "
                           "three times as much as slightly moved copies of it do")


def test_near_the_threshold_it_says_borderline():
    ev = [_ev(0.55, 1.2)]
    text = headline(fuse(ev), ev, 0.5, width=200, height=200, n_references=4, category="tile")
    assert text.startswith("Anomalous, borderline:")


def test_two_scales_speak_with_their_sums_ratio_and_the_region_of_the_scale_that_sees_more():
    from agent.survey_fusion import survey_evidence
    from tools.patch_knn import calibrate_edge

    def scale(tool, raw, box):
        normal = [1.0, 0.9, 1.1, 1.0]
        cal = calibrate_edge(normal, "leave-one-out")
        return Evidence(tool=tool, score=cal(raw), raw_score=raw, normal_ratio=raw, log_odds=cal.log_odds(raw),
                        calibration="leave-one-out", reference_scores=normal,
                        regions=[Region(bbox_xyxy=box, score=raw)], args={"image_id": "query", "stage": "survey"})

    # a small hole: the pooled scale sees only the frame (bottom-left), the unpooled one the hole (centre)
    parts = [scale("patch_knn", 0.97, (10, 160, 40, 190)), scale("patch_knn_fine", 1.6, (90, 90, 110, 110))]
    ev = [*parts, survey_evidence(parts, "query", 4)]
    text = headline(fuse(ev), ev, 0.5, width=200, height=200, n_references=4, category="fabric")
    assert text.startswith("Anomalous, clearly: the centre of the fabric differs from all 4 good references "
                           "1.3 times as much as they differ from each other (score"), text  # (0.97 + 1.6) / 2
