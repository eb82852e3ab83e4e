"""evals.metrics against scikit-learn, brute force and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from evals.metrics import MetricsInputError, aggregate, image_metrics, pixel_metrics, trapezoid

# ----------------------------------------------------------------------------- image level


@pytest.mark.parametrize("seed", range(6))
def test_image_auroc_aupr_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)  # both classes present
    if seed % 2:  # many ties
        scores = rng.integers(0, 6, n).astype(float)
    else:
        scores = rng.normal(size=n) + 0.8 * labels
    out = image_metrics(labels, scores)
    assert out["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert out["aupr"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert out["n"] == n and out["n_anomalous"] == int(labels.sum())


def test_image_hand_computed_case():
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.4, 0.35, 0.8]
    out = image_metrics(labels, scores, pred_labels=["normal", "anomalous", "normal", "anomalous"])
    assert out["auroc"] == pytest.approx(0.75)
    assert out["aupr"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    # thresholds 0.8: F1 2/3; 0.4: 1/2; 0.35: 4/5; 0.1: 2/3
    assert out["f1_max"] == pytest.approx(0.8)
    assert out["f1_max_threshold"] == pytest.approx(0.35)
    assert out["f1_flag_all"] == pytest.approx(2 / 3)
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["balanced_accuracy"] == pytest.approx(0.5)
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(0.5)


def test_image_at_verdict_labels_unbalanced():
    labels = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    preds = [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    out = image_metrics(labels, np.arange(10.0), pred_labels=preds)
    assert out["accuracy"] == pytest.approx(8 / 10)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["balanced_accuracy"] == pytest.approx((2 / 3 + 6 / 7) / 2)
    assert out["f1_flag_all"] == pytest.approx(2 * 0.3 / 1.3)


@pytest.mark.parametrize("seed", range(4))
def test_f1_max_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(0, 2, 80).astype(bool)
    labels[0] = True
    scores = np.round(rng.normal(size=80) + labels, 1)
    best = 0.0
    for t in np.unique(np.r_[scores, scores.max() + 1]):
        pred = scores >= t
        tp = np.sum(pred & labels)
        fp = np.sum(pred & ~labels)
        fn = np.sum(~pred & labels)
        if tp:
            best = max(best, 2 * tp / (2 * tp + fp + fn))
    out = image_metrics(labels, scores)
    assert out["f1_max"] == pytest.approx(best)
    pred = scores >= out["f1_max_threshold"]
    tp = np.sum(pred & labels)
    assert 2 * tp / (np.sum(pred) + np.sum(labels)) == pytest.approx(best)


def test_one_class_is_reported_not_crashing():
    out = image_metrics([1, 1, 1], [0.2, 0.5, 0.9], pred_labels=[1, 0, 1])
    assert out["auroc"] is None and out["aupr"] is None
    assert any("only one class" in n for n in out["notes"])
    assert out["f1_flag_all"] == pytest.approx(1.0)
    assert out["recall"] == pytest.approx(2 / 3)
    normal_only = image_metrics([0, 0], [0.1, 0.3], pred_labels=[0, 0])
    assert normal_only["auroc"] is None and normal_only["f1_max"] is None
    assert normal_only["f1_flag_all"] == 0.0
    assert normal_only["precision"] is None and normal_only["recall"] is None
    assert normal_only["accuracy"] == 1.0


def test_without_pred_labels_threshold_metrics_are_none():
    out = image_metrics([0, 1], [0.1, 0.9])
    assert out["auroc"] == 1.0
    for key in ("accuracy", "balanced_accuracy", "precision", "recall"):
        assert out[key] is None
    assert any("no predicted labels" in n for n in out["notes"])


@pytest.mark.parametrize(
    ("labels", "scores", "preds", "match"),
    [
        ([0, 1], [0.1, float("nan")], None, "finite"),
        ([0, 1, 1], [0.1, 0.2], None, "one score per image"),
        ([0, 2], [0.1, 0.2], None, "0 \\(normal\\) or 1"),
        (["normal", "weird"], [0.1, 0.2], None, "weird"),
        ([0, 1], [0.1, 0.2], [1], "one per image"),
        ([], [], None, "empty"),
    ],
)
def test_image_bad_inputs(labels, scores, preds, match):
    with pytest.raises(MetricsInputError, match=match):
        image_metrics(labels, scores, pred_labels=preds)


# ----------------------------------------------------------------------------- pixel level


def _reference_pixel(masks, maps, max_fpr=0.3):
    """Straightforward MVTec-style curves: loop over every distinct threshold."""
    regions = []
    for m in masks:
        lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
        regions.append([lab == k for k in range(1, n + 1)])
    neg = sum(int((~m).sum()) for m in masks)
    values = np.unique(np.concatenate([a.ravel() for a in maps]))
    fprs, pros = [0.0], [0.0]
    for t in values[::-1]:
        fp = sum(int(((a >= t) & ~m).sum()) for m, a in zip(masks, maps, strict=True))
        overlaps = [
            ((a >= t) & r).sum() / r.sum() for a, rs in zip(maps, regions, strict=True) for r in rs
        ]
        fprs.append(fp / neg)
        pros.append(float(np.mean(overlaps)))
    fprs, pros = np.array(fprs), np.array(pros)
    x = np.r_[fprs[fprs <= max_fpr], max_fpr]
    y = np.r_[pros[fprs <= max_fpr], np.interp(max_fpr, fprs, pros)]
    return trapezoid(y, x) / max_fpr


def _random_case(seed, shapes):
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for h, w in shapes:
        m = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(0, 3))):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            m[y : y + int(rng.integers(2, 6)), x : x + int(rng.integers(2, 6))] = True
        masks.append(m)
        maps.append((rng.random((h, w)) + 0.7 * m).astype(np.float32))
    masks[0][1:4, 1:4] = True  # at least one region
    return masks, maps


@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_matches_sklearn_and_aupro_matches_reference(seed):
    masks, maps = _random_case(seed, [(16, 20), (24, 12), (10, 10)])  # sizes differ
    out = pixel_metrics(masks, maps)
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert out["aupro"] == pytest.approx(_reference_pixel(masks, maps), abs=1e-9)
    assert out["n_anomalous_pixels"] == int(y.sum())


def test_pixel_quantile_thresholds_stay_close_to_exact():
    masks, maps = _random_case(7, [(64, 64)] * 6)
    exact = pixel_metrics(masks, maps)
    coarse = pixel_metrics(masks, maps, num_thresholds=300)
    assert coarse["pixel_auroc"] == pytest.approx(exact["pixel_auroc"], abs=5e-3)
    assert coarse["aupro"] == pytest.approx(exact["aupro"], abs=1e-2)


def _two_regions():
    mask = np.zeros((64, 64), bool)
    mask[8:24, 8:24] = True  # 16x16
    mask[40:50, 30:60] = True  # 10x30
    return mask


def test_aupro_perfect_map_is_one():
    mask = _two_regions()
    amap = mask.astype(np.float32) + 0.01 * np.random.default_rng(0).random(mask.shape, np.float32)
    out = pixel_metrics([mask, np.zeros((32, 32), bool)], [amap, np.zeros((32, 32), np.float32)])
    assert out["aupro"] == pytest.approx(1.0, abs=1e-6)
    assert out["pixel_auroc"] == pytest.approx(1.0)
    assert out["n_regions"] == 2


def test_aupro_half_of_each_region_is_half():
    mask = _two_regions()
    amap = np.full(mask.shape, 0.5, np.float32)  # normal pixels: in between
    amap[mask] = 0.0
    amap[8:24, 8:16] = 1.0  # left half of region 1
    amap[40:50, 30:45] = 1.0  # left half of region 2
    out = pixel_metrics([mask], [amap])
    assert out["aupro"] == pytest.approx(0.5, abs=1e-9)


def test_aupro_weights_regions_equally_not_pixels():
    mask = np.zeros((64, 64), bool)
    mask[2:42, 2:42] = True  # big region, 1600 px
    mask[55:58, 55:58] = True  # small region, 9 px
    amap = np.full(mask.shape, 0.5, np.float32)  # normal pixels: in between
    amap[mask] = 0.0
    amap[55:58, 55:58] = 1.0  # only the small region is found
    out = pixel_metrics([mask], [amap])
    # PRO is 0.5 from FPR 0 on (one of two regions), pixel recall only 9/1609
    assert out["aupro"] == pytest.approx(0.5, abs=1e-9)
    assert out["pixel_auroc"] < 0.1


def test_aupro_random_map_is_low():
    rng = np.random.default_rng(3)
    masks = [_two_regions() for _ in range(3)]
    maps = [rng.random(m.shape).astype(np.float32) for m in masks]
    out = pixel_metrics(masks, maps)
    assert out["aupro"] == pytest.approx(0.15, abs=0.04)  # PRO ~ FPR -> area 0.045 / 0.3
    assert out["pixel_auroc"] == pytest.approx(0.5, abs=0.05)


def test_pixel_degenerate_and_bad_inputs():
    no_anomaly = pixel_metrics([np.zeros((8, 8), bool)], [np.ones((8, 8), np.float32)])
    assert no_anomaly["pixel_auroc"] is None and no_anomaly["aupro"] is None
    assert no_anomaly["notes"]
    with pytest.raises(MetricsInputError, match="resize the map"):
        pixel_metrics([np.zeros((8, 8), bool)], [np.zeros((8, 9), np.float32)])
    with pytest.raises(MetricsInputError, match="one map per mask"):
        pixel_metrics([np.zeros((8, 8), bool)], [])
    with pytest.raises(MetricsInputError, match="max_fpr"):
        pixel_metrics([np.zeros((8, 8), bool)], [np.zeros((8, 8))], max_fpr=0.0)


# ----------------------------------------------------------------------------- aggregate


def test_aggregate_mean_row():
    rows = {
        "a": {"n": 10, "n_anomalous": 4, "auroc": 0.8, "aupro": None, "notes": ["x"]},
        "b": {"n": 6, "n_anomalous": 3, "auroc": 0.6, "aupro": 0.5, "notes": []},
        "c": {"n": 4, "n_anomalous": 2, "auroc": None, "aupro": 0.7, "notes": []},
    }
    out = aggregate(rows)
    assert out["per_category"] is rows
    mean = out["mean"]
    assert mean["n_categories"] == 3
    assert mean["n"] == 20 and mean["n_anomalous"] == 9
    assert mean["auroc"] == pytest.approx(0.7)
    assert mean["aupro"] == pytest.approx(0.6)
    assert any(n.startswith("auroc: mean over 2 of 3") and "c" in n for n in mean["notes"])
    all_none = aggregate({"a": {"auroc": None}})
    assert all_none["mean"]["auroc"] is None


def test_trapezoid_needs_no_numpy_2(monkeypatch):
    """numpy>=1.26 is declared: the metrics must not call np.trapezoid (NumPy 2 only) nor np.trapz (gone in 2.4)."""
    monkeypatch.delattr(np, "trapezoid", raising=False)
    monkeypatch.delattr(np, "trapz", raising=False)
    x = np.array([0.0, 0.25, 0.5, 1.0])
    y = np.array([0.0, 0.5, 0.75, 1.0])
    assert trapezoid(y, x) == pytest.approx(0.0625 + 0.15625 + 0.4375)
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    assert image_metrics(labels, scores)["auroc"] == pytest.approx(roc_auc_score(labels, scores))
