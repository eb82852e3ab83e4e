"""Anomaly-detection metrics: image level, pixel level, and the mean over categories.

Image level (`image_metrics`): AUROC, AUPR (average precision), F1-max over thresholds (all three
from scikit-learn's curves in `image_curve_metrics`, the only implementation), the
trivial flag-everything F1 beside it, and accuracy / balanced accuracy / precision / recall at the
verdict's own labels. Bootstrap intervals and operating points are in `evals.uncertainty`. Pixel level (`pixel_metrics`): pixel AUROC and AUPRO (per-region overlap integrated up
to an FPR limit, normalised by that limit as in MVTec AD's evaluation). `aggregate` adds the mean row.

Labels: 1 / True / "anomalous" is the positive class, 0 / False / "normal" the negative one.
Undefined metrics (e.g. AUROC with one class only) are None and `notes` says why; nothing crashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

IMAGE_METRICS = (
    "auroc",
    "aupr",
    "f1_max",
    "f1_flag_all",
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
)
PIXEL_METRICS = ("pixel_auroc", "aupro")

_POSITIVE_WORDS = {"anomalous", "anomaly", "abnormal", "defect", "bad", "1", "true"}
_NEGATIVE_WORDS = {"normal", "good", "ok", "0", "false"}


class MetricsInputError(ValueError):
    """Inputs the metrics cannot use (shape mismatch, non-finite score, unknown label)."""


def as_binary_labels(values: Sequence[Any] | np.ndarray, name: str = "labels") -> np.ndarray:
    """Labels as a bool array (True = anomalous).

    Args:
        values: 0/1, bools, or the words "normal"/"anomalous" (also "good"/"bad").
        name: the argument's name, for error messages.

    Returns:
        (N,) bool array.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        msg = f"{name} must be a flat sequence, got shape {arr.shape}"
        raise MetricsInputError(msg)
    if arr.dtype.kind == "b":
        return arr.copy()
    if arr.dtype.kind in "iuf":
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            msg = f"{name} contains NaN/inf; pass 0 (normal) or 1 (anomalous) for every item"
            raise MetricsInputError(msg)
        bad = ~np.isin(arr, (0, 1))
        if bad.any():
            msg = (
                f"{name} must be 0 (normal) or 1 (anomalous); item {int(np.argmax(bad))} is "
                f"{arr[bad][0]!r}"
            )
            raise MetricsInputError(msg)
        return arr.astype(bool)
    out = np.empty(arr.shape[0], dtype=bool)
    for i, value in enumerate(arr.tolist()):
        word = str(value).strip().lower()
        if word in _POSITIVE_WORDS:
            out[i] = True
        elif word in _NEGATIVE_WORDS:
            out[i] = False
        else:
            msg = f"{name}[{i}] is {value!r}; use 'normal'/'anomalous' or 0/1"
            raise MetricsInputError(msg)
    return out


def _as_scores(values: Sequence[Any] | np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        msg = f"scores has shape {arr.shape} but labels has {n} items; pass one score per image"
        raise MetricsInputError(msg)
    if not np.all(np.isfinite(arr)):
        idx = int(np.argmax(~np.isfinite(arr)))
        msg = (
            f"scores[{idx}] is {arr[idx]}; every score must be finite "
            "(drop failed items before computing metrics)"
        )
        raise MetricsInputError(msg)
    return arr


def image_curve_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Image AUROC, AUPR and F1-max from scikit-learn's ROC and precision-recall curves.

    The one implementation of the image-level metrics (reports, the progress bar and the bootstrap
    all come here). AUROC is the trapezoid area under `roc_curve` (as `roc_auc_score`), AUPR is the
    average precision sum_k (R_k - R_{k-1}) P_k over `precision_recall_curve` (as
    `average_precision_score`), F1-max the best F1 on that curve (flagging score >= threshold).

    Args:
        labels: (N,) bool or 0/1 with both classes present.
        scores: (N,) finite floats, higher = more anomalous.

    Returns:
        {"auroc", "aupr", "f1_max", "f1_max_threshold"}.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    fpr, tpr, _ = roc_curve(y, s)
    precision, recall, thresholds = precision_recall_curve(y, s)
    p, r = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    best = int(np.argmax(f1))
    return {
        "auroc": trapezoid(tpr, fpr),
        "aupr": float(-np.sum(np.diff(recall) * p)),
        "f1_max": float(f1[best]),
        "f1_max_threshold": float(thresholds[best]),
    }


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Image AUROC (see `image_curve_metrics`); labels (N,) with both classes, scores (N,) floats."""
    return image_curve_metrics(labels, scores)["auroc"]


def image_metrics(
    labels: Sequence[Any] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    pred_labels: Sequence[Any] | np.ndarray | None = None,
) -> dict[str, Any]:
    """Image-level metrics.

    Args:
        labels: ground truth, (N,), 1/True/"anomalous" = anomalous.
        scores: anomaly scores, (N,) floats, higher = more anomalous (any range).
        pred_labels: the verdicts' own labels, (N,); when None, the metrics at the verdict's
            threshold (accuracy, balanced_accuracy, precision, recall) are None.

    Returns:
        dict with n, n_anomalous, n_normal, auroc, aupr, f1_max, f1_max_threshold, f1_flag_all,
        accuracy, balanced_accuracy, precision, recall (floats in [0, 1] or None) and notes
        (list of str explaining every None).
    """
    y = as_binary_labels(labels, "labels")
    if y.size == 0:
        msg = "no items to score: labels is empty"
        raise MetricsInputError(msg)
    s = _as_scores(scores, y.size)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    out: dict[str, Any] = {"n": int(y.size), "n_anomalous": n_pos, "n_normal": n_neg}
    notes: list[str] = []

    curves = image_curve_metrics(y, s) if n_pos and n_neg else None
    if curves is not None:
        out["auroc"] = curves["auroc"]
        out["aupr"] = curves["aupr"]
    else:
        out["auroc"] = out["aupr"] = None
        notes.append(f"auroc/aupr undefined: only one class ({n_pos} anomalous, {n_neg} normal)")
    if curves is not None:
        out["f1_max"], out["f1_max_threshold"] = curves["f1_max"], curves["f1_max_threshold"]
    elif n_pos:  # every item is anomalous: flagging everything is the best (F1 1)
        out["f1_max"], out["f1_max_threshold"] = 1.0, float(s.min())
    if n_pos:
        precision_all = n_pos / y.size
        out["f1_flag_all"] = 2 * precision_all / (1 + precision_all)
    else:
        out["f1_max"] = out["f1_max_threshold"] = None
        out["f1_flag_all"] = 0.0
        notes.append("f1_max undefined: no anomalous items")

    for key in ("accuracy", "balanced_accuracy", "precision", "recall"):
        out[key] = None
    if pred_labels is None:
        notes.append("accuracy/balanced_accuracy/precision/recall: no predicted labels given")
    else:
        p = as_binary_labels(pred_labels, "pred_labels")
        if p.shape != y.shape:
            msg = f"pred_labels has {p.size} items but labels has {y.size}; pass one per image"
            raise MetricsInputError(msg)
        tp = int(np.sum(p & y))
        fp = int(np.sum(p & ~y))
        tn = int(np.sum(~p & ~y))
        out["accuracy"] = (tp + tn) / y.size
        per_class = []
        if n_pos:
            out["recall"] = tp / n_pos
            per_class.append(out["recall"])
        else:
            notes.append("recall undefined: no anomalous items")
        if n_neg:
            per_class.append(tn / n_neg)
        out["balanced_accuracy"] = float(np.mean(per_class))
        if tp + fp:
            out["precision"] = tp / (tp + fp)
        else:
            notes.append("precision undefined: nothing was flagged anomalous")
    out["notes"] = notes
    return out


# ----------------------------------------------------------------------------- pixel level

_MAX_SAMPLE = 2_000_000  # map values sampled to choose thresholds
_REGION_CELLS = 4_000_000  # regions x thresholds histogrammed at once


def _check_pair(i: int, mask: Any, amap: Any) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(mask)
    a = np.asarray(amap, dtype=np.float32)
    if m.ndim != 2 or a.ndim != 2:
        msg = f"image {i}: mask and map must be HxW arrays, got {m.shape} and {a.shape}"
        raise MetricsInputError(msg)
    if m.shape != a.shape:
        msg = (
            f"image {i}: mask is {m.shape} but map is {a.shape}; resize the map to the mask's "
            "size before computing pixel metrics"
        )
        raise MetricsInputError(msg)
    if not np.all(np.isfinite(a)):
        msg = f"image {i}: the anomaly map contains NaN/inf"
        raise MetricsInputError(msg)
    return m > 0, a


def _thresholds(masks: Sequence[Any], maps: Sequence[Any], num_thresholds: int) -> np.ndarray:
    """Validate every pair; return ascending thresholds shared by all images.

    Every distinct map value when there are few enough (exact metrics), else quantiles of a
    strided sample of at most ~2M values plus the global min and max.
    """
    total = 0
    for i, (mask, amap) in enumerate(zip(masks, maps, strict=True)):
        total += _check_pair(i, mask, amap)[1].size
    stride = max(1, -(-total // _MAX_SAMPLE))
    parts = []
    lo, hi = np.inf, -np.inf
    for amap in maps:
        a = np.asarray(amap, dtype=np.float32)
        lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
        parts.append(a.ravel()[::stride])
    sample = np.concatenate(parts)
    uniq = np.unique(sample)
    if stride == 1 and uniq.size <= num_thresholds:
        return uniq
    qs = np.quantile(sample, np.linspace(0.0, 1.0, num_thresholds)).astype(np.float32)
    return np.unique(np.r_[np.float32(lo), qs, np.float32(hi)])


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid-rule area under y(x), as ``np.trapezoid`` (NumPy >= 2) and ``np.trapz`` (NumPy 1.x, removed in
    2.4): written out so the declared ``numpy>=1.26`` works on both."""
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if y.size < 2:
        return 0.0
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1])) / 2.0)


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under y(x) from x[0] to x_max (x ascending), interpolating y linearly at x_max."""
    keep = x <= x_max
    xs, ys = x[keep], y[keep]
    if xs[-1] < x_max and keep.sum() < x.size:
        j = int(np.argmax(~keep))  # first point beyond x_max
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0) if x1 > x0 else y1
        xs, ys = np.r_[xs, x_max], np.r_[ys, y_at]
    return trapezoid(ys, xs)


def pixel_metrics(
    masks: Sequence[Any],
    maps: Sequence[Any],
    max_fpr: float = 0.3,
    num_thresholds: int = 10_000,
) -> dict[str, Any]:
    """Pixel AUROC and AUPRO over a set of images, in bounded memory.

    Every image is binned on one shared set of thresholds (each distinct value when there are at
    most `num_thresholds` of them, which makes the result exact; otherwise quantiles of a strided
    sample, which bounds memory to O(num_thresholds) plus one image). AUPRO follows MVTec AD:
    PRO(t) is the mean over all connected ground-truth regions (8-connectivity, all images) of
    the fraction of the region flagged at t; FPR(t) counts all pixels outside the masks; the area
    under PRO(FPR) up to `max_fpr` is divided by `max_fpr`.

    Args:
        masks: per image an HxW array, nonzero = anomalous pixel (sizes may differ across images).
        maps: per image an HxW float anomaly map of the same size as its mask.
        max_fpr: FPR integration limit for AUPRO, in (0, 1].
        num_thresholds: cap on the number of thresholds.

    Returns:
        dict with pixel_auroc, aupro (floats or None), n_images, n_regions, n_anomalous_pixels,
        n_normal_pixels and notes (why a value is None).
    """
    from scipy import ndimage

    if len(masks) != len(maps):
        msg = f"got {len(masks)} masks but {len(maps)} maps; pass one map per mask"
        raise MetricsInputError(msg)
    if not 0.0 < max_fpr <= 1.0:
        msg = f"max_fpr must be in (0, 1], got {max_fpr}"
        raise MetricsInputError(msg)
    if not masks:
        msg = "no images to score: masks is empty"
        raise MetricsInputError(msg)
    thr = _thresholds(masks, maps, num_thresholds)
    n_bins = thr.size
    pos_hist = np.zeros(n_bins, np.int64)
    neg_hist = np.zeros(n_bins, np.int64)
    pro_sum = np.zeros(n_bins, np.float64)  # sum over regions of (fraction of region >= thr[j])
    n_regions = 0
    structure = np.ones((3, 3), dtype=bool)
    chunk = max(1, _REGION_CELLS // n_bins)  # regions histogrammed at once (bounds memory)
    for i, (mask, amap) in enumerate(zip(masks, maps, strict=True)):
        m, a = _check_pair(i, mask, amap)
        # bin j holds values in [thr[j], thr[j+1])
        idx = np.clip(np.searchsorted(thr, a.ravel(), side="right") - 1, 0, n_bins - 1)
        flat_m = m.ravel()
        pos_idx = idx[flat_m]
        pos_hist += np.bincount(pos_idx, minlength=n_bins)
        neg_hist += np.bincount(idx[~flat_m], minlength=n_bins)
        if not pos_idx.size:
            continue
        regions, count = ndimage.label(m, structure=structure)
        lab = regions.ravel()[flat_m].astype(np.int64) - 1
        for r0 in range(0, count, chunk):
            r1 = min(count, r0 + chunk)
            sel = (lab >= r0) & (lab < r1)
            hist = np.bincount(
                (lab[sel] - r0) * n_bins + pos_idx[sel], minlength=(r1 - r0) * n_bins
            ).reshape(r1 - r0, n_bins)
            at_or_above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]
            pro_sum += (at_or_above / at_or_above[:, :1]).sum(axis=0)
        n_regions += count

    n_pos = int(pos_hist.sum())
    n_neg = int(neg_hist.sum())
    out: dict[str, Any] = {
        "n_images": len(masks),
        "n_regions": n_regions,
        "n_anomalous_pixels": n_pos,
        "n_normal_pixels": n_neg,
        "pixel_auroc": None,
        "aupro": None,
    }
    notes: list[str] = []
    if n_pos == 0 or n_neg == 0:
        notes.append(
            f"pixel metrics undefined: {n_pos} anomalous and {n_neg} normal pixels (need both)"
        )
        out["notes"] = notes
        return out
    # counts flagged at each threshold (score >= thr[j]), then ordered by rising FPR
    tp = np.cumsum(pos_hist[::-1])
    fp = np.cumsum(neg_hist[::-1])
    pro = pro_sum[::-1] / n_regions
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    pro = np.r_[0.0, pro]
    out["pixel_auroc"] = trapezoid(tpr, fpr)
    out["aupro"] = _trapezoid_to(fpr, pro, max_fpr) / max_fpr
    out["notes"] = notes
    return out


# ----------------------------------------------------------------------------- aggregation


def aggregate(per_category: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The per-category rows and their mean row.

    Float metrics are averaged over the categories where they are defined (not None); integer
    counts (keys starting with "n_" or equal to "n") are summed. Other values are left out of the
    mean row.

    Args:
        per_category: category name -> metrics dict (e.g. image_metrics merged with pixel_metrics).

    Returns:
        {"per_category": per_category, "mean": mean row with n_categories and notes}.
    """
    keys: list[str] = []
    for row in per_category.values():
        keys.extend(k for k in row if k not in keys)
    mean: dict[str, Any] = {"n_categories": len(per_category)}
    notes: list[str] = []
    for key in keys:
        values = [row.get(key) for row in per_category.values()]
        present = [v for v in values if v is not None]
        is_count = key == "n" or key.startswith("n_")
        if key.endswith("_threshold"):
            continue  # thresholds of different categories do not average into anything
        if not present or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in present
        ):
            if present:
                continue  # notes, lists, text: not averaged
            mean[key] = None
            continue
        if is_count:
            mean[key] = int(sum(present))
            continue
        mean[key] = float(np.mean(present))
        if len(present) < len(values):
            missing = [c for c, row in per_category.items() if row.get(key) is None]
            notes.append(
                f"{key}: mean over {len(present)} of {len(values)} categories "
                f"(undefined for {', '.join(missing)})"
            )
    mean["notes"] = notes
    return {"per_category": per_category, "mean": mean}
