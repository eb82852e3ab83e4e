"""How sure the numbers are, and what a line sees at a threshold.

- `bootstrap_image`: percentile bootstrap intervals for image AUROC, AUPR and F1-max. Each replicate
  resamples the anomalous images and the normal images separately, with replacement (a stratified
  bootstrap: every replicate keeps the test set's class counts, so AUROC is always defined). Seeded:
  the same seed and inputs give the same interval.
- `operating_point`: precision, recall, false-positive rate and F1 of a given flagging, overall and
  per defect type (a defect type's row counts that type's anomalies against all normal images).
- `normal_only_threshold`: a threshold chosen from normal images only (the references' own
  leave-one-out scores) at a target false-positive rate.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from evals.metrics import image_curve_metrics

BOOT_METRICS = ("auroc", "aupr", "f1_max")
N_BOOT = 1000
CONFIDENCE = 0.95


def category_rng(seed: int, name: str) -> np.random.Generator:
    """The bootstrap generator of one category: reproducible, independent across category names."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def bootstrap_replicates(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    n_boot: int = N_BOOT,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray] | None:
    """Bootstrap replicates of image AUROC, AUPR and F1-max, resampling within each label.

    Args:
        labels: (N,) 0/1 (1 = anomalous).
        scores: (N,) finite floats.
        n_boot: replicates.
        rng: the generator (default: seed 0).

    Returns:
        {metric: (n_boot,) float array} for `BOOT_METRICS`, or None when a class is missing.
    """
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if not pos.size or not neg.size:
        return None
    rng = rng or np.random.default_rng(0)
    out = {m: np.empty(n_boot) for m in BOOT_METRICS}
    yb = np.r_[np.ones(pos.size, np.int64), np.zeros(neg.size, np.int64)]
    for b in range(n_boot):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        curves = image_curve_metrics(yb, s[idx])
        for m in BOOT_METRICS:
            out[m][b] = curves[m]
    return out


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high) percentile interval of bootstrap replicates."""
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(replicates, [tail, 100.0 - tail])
    return float(lo), float(hi)


def interval_fields(replicates: dict[str, np.ndarray] | None) -> dict[str, float | None]:
    """Flat fields ``<metric>_lo`` / ``<metric>_hi`` for metrics.json (None when undefined)."""
    out: dict[str, float | None] = {}
    for m in BOOT_METRICS:
        lo, hi = percentile_interval(replicates[m]) if replicates is not None else (None, None)
        out[f"{m}_lo"], out[f"{m}_hi"] = lo, hi
    return out


def bootstrap_image(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
    name: str = "",
) -> dict[str, float | None]:
    """95% intervals of image AUROC, AUPR and F1-max as ``auroc_lo``, ``auroc_hi``, ... (see module)."""
    return interval_fields(bootstrap_replicates(labels, scores, n_boot, category_rng(seed, name)))


def _rates(tp: int, fp: int, tn: int, fn: int) -> dict[str, Any]:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    fpr = fp / (fp + tn) if fp + tn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {"precision": precision, "recall": recall, "fpr": fpr, "f1": f1, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def operating_point(
    labels: Sequence[int] | np.ndarray,
    flagged: Sequence[bool] | np.ndarray,
    defect_types: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What a line sees at one threshold.

    Args:
        labels: (N,) 0/1 ground truth.
        flagged: (N,) bool, True = the item was flagged anomalous at the threshold.
        defect_types: (N,) the ground-truth defect type of each item (ignored for normal items).

    Returns:
        precision, recall, fpr, f1 (None where undefined), tp, fp, tn, fn, and ``per_defect_type``:
        {type: the same fields for that type's anomalies against all normal items}.
    """
    y = np.asarray(labels, dtype=bool)
    f = np.asarray(flagged, dtype=bool)
    tp, fp = int(np.sum(f & y)), int(np.sum(f & ~y))
    tn, fn = int(np.sum(~f & ~y)), int(np.sum(~f & y))
    out = _rates(tp, fp, tn, fn)
    per_type: dict[str, Any] = {}
    if defect_types is not None:
        types = np.asarray(list(defect_types), dtype=object)
        for t in sorted({str(x) for x in types[y]}):
            sel = y & (types == t)
            per_type[t] = _rates(int(np.sum(f & sel)), fp, tn, int(np.sum(~f & sel)))
    out["per_defect_type"] = per_type
    return out


def normal_only_threshold(normal_scores: Sequence[float], target_fpr: float) -> float:
    """The lowest threshold at which at most `target_fpr` of the normal scores are flagged.

    Flagging is ``score > threshold``: with n normal scores sorted ascending, ``k = floor(target_fpr
    * n)`` of them may lie above it, so the threshold is the (n - k)-th smallest score. With few
    scores this is conservative (4 references at 5%: the highest reference score).

    Raises:
        ValueError: no scores, or `target_fpr` outside [0, 1).
    """
    if not 0.0 <= target_fpr < 1.0:
        msg = f"--target-fpr must be in [0, 1), got {target_fpr}"
        raise ValueError(msg)
    s = np.sort(np.asarray(list(normal_scores), dtype=np.float64))
    if not s.size:
        msg = "no normal scores to choose a threshold from"
        raise ValueError(msg)
    k = int(np.floor(target_fpr * s.size + 1e-9))
    return float(s[s.size - 1 - k])
