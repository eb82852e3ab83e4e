"""evals.bench.lco_protocol's two scales: the protocol scores them exactly as the survey does, and the edge
factor is chosen on recall and false-positive rate at the default threshold."""

import numpy as np
import pytest

from agent.survey_fusion import SCALE_EDGE, scales_reading
from evals.bench import lco_protocol as lco
from tools.types import Evidence


def _row(category: str, k: int, pk: float, fine: float, label: int, meta: dict) -> dict:
    return {"category": category, "k": k, "draw": 0, "label": label, "patch_knn": [pk, 0.0, 10.0],
            "patch_knn_fine": [fine, 0.0, 5.0], "_set": meta}


def test_protocol_scores_the_two_scales_as_the_survey_does():
    meta = {"patch_knn:normal": [0.9, 1.0, 1.1, 1.2], "patch_knn_fine:normal": [1.0, 0.95, 1.05, 1.0]}
    row = _row("a", 4, 1.3, 1.1, 1, meta)
    evidence = [Evidence(tool=t, score=0.5, raw_score=row[t][0], calibration="leave-one-out",
                         reference_scores=meta[f"{t}:normal"]) for t in ("patch_knn", "patch_knn_fine")]
    raw, normal, cal = scales_reading(*evidence)
    assert raw == pytest.approx(2.4) and normal == pytest.approx([1.9, 1.95, 2.15, 2.2])
    assert lco.scales_log_odds(row) == cal.log_odds(raw)
    assert cal.edge == np.median(normal) * SCALE_EDGE["leave-one-out"]
    assert lco.fused(lco.CANDIDATES["scales"], row) == raw  # AUROC ranks the raw sum


def test_edge_factor_is_the_best_recall_minus_fpr_within_the_fpr_bar():
    meta = {"patch_knn:normal": [1.0, 1.0, 1.0, 1.0], "patch_knn_fine:normal": [1.0, 1.0, 1.0, 1.0]}
    # sums: normals at 2.12 (beyond the 1.05 edge, 2.10) and 1.9; defects at 2.16 (beyond 1.05 only) and 2.6
    rows = [_row("a", 4, s / 2, s / 2, y, meta) for s, y in ((2.12, 0), (1.9, 0), (1.9, 0), (2.16, 1), (2.6, 1))]
    images = {("a", 4, 0): rows}
    assert lco.recall_fpr(images, ("scales",), 1.05)[("a", 4)] == (1.0, 1 / 3)
    assert lco.recall_fpr(images, ("scales",), 1.10)[("a", 4)] == (0.5, 0.0)
    assert lco.choose_edge(images, 4, None) == 1.10  # 1.05 has the better recall - FPR but FPR 0.33 > 0.15
    assert lco.choose_edge(images, 4, "a") == max(lco.SCALE_EDGES["leave-one-out"])  # nothing left: the strictest
