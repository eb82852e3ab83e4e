"""Metrics of a results file: per category, averaged over repeats, with the mean row.

Reads results.jsonl in one streaming pass keeping only (label, score, predicted label) per item;
pixel metrics load one category's masks and maps at a time, downscaled to `map_side` pixels.

Every row carries its coverage: ``n_total`` items planned and judged, ``n_ok`` judged successfully,
``coverage = n_ok / n_total``, ``n_errors`` and ``errors_by_kind``. Threshold-free metrics use the ok
items; ``auroc_strict`` also counts each failed item as the worst case for its label (a failed anomaly
scores below every item, a failed normal image above every item). Pixel metrics carry
``pixel_coverage`` (items whose float map was found / items that needed one). Bootstrap intervals
(``auroc_lo``/``auroc_hi``, ``aupr_*``, ``f1_max_*``) and operating points are described in
`evals.uncertainty`; ``operating_point`` is at the verdicts' own labels, ``operating_point_normal_only``
at a threshold chosen from the references' leave-one-out scores (``reference_scores.jsonl``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evals.datasets import load_mask
from evals.metrics import aggregate, image_auroc, image_metrics, pixel_metrics
from evals.results import iter_records, record_key
from evals.uncertainty import (
    BOOT_METRICS,
    N_BOOT,
    bootstrap_replicates,
    category_rng,
    interval_fields,
    normal_only_threshold,
    operating_point,
)
from tools.maps import float_map_path, read_float_map  # noqa: F401 - float_map_path: evals.runner imports it here

MAP_SIDE = 256
REFERENCE_SCORES = "reference_scores.jsonl"  # the references' leave-one-out verdicts


def record_map_path(record: dict[str, Any]) -> str | None:
    """The anomaly map of a record: its own ``map_path``, else the first evidence map."""
    if record.get("map_path"):
        return record["map_path"]
    for ev in record.get("evidence") or []:
        if ev.get("map_path"):
            return ev["map_path"]
    return None


SLIM_FIELDS = (
    "image", "category", "repeat", "gt_label", "gt_mask", "gt_defect_type", "status", "error_kind",
    "pred_score", "pred_label", "threshold", "disputed", "score_source",
)


def slim_record(rec: dict[str, Any], offset: int | None = None) -> dict[str, Any]:
    """The fields metrics and galleries need (plus the map path and the line's byte offset)."""
    slim = {k: rec.get(k) for k in SLIM_FIELDS}
    slim["map_path"] = record_map_path(rec)
    slim["_offset"] = offset
    return slim


def _downscale(arr: np.ndarray, side: int, nearest: bool) -> np.ndarray:
    h, w = arr.shape
    scale = side / max(h, w)
    if scale >= 1.0:
        return arr
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if nearest:
        return np.asarray(Image.fromarray(arr.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
    return np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize(size, Image.BILINEAR))


def _load_map(path: str) -> np.ndarray:
    """HxW float32 map: the raw float ``.npy`` beside the PNG when there is one, else the image itself."""
    amap = read_float_map(path)
    if amap is None:
        raise FileNotFoundError(path)
    return amap


def _pixel_for(records: list[dict[str, Any]], map_side: int) -> dict[str, Any] | None:
    """Pixel metrics of one category's records, or None when it has no masks."""
    if not any(r.get("gt_mask") for r in records if r.get("gt_label") == 1):
        return None
    masks, maps, missing = [], [], 0
    for r in records:
        if r.get("gt_label") == 1 and not r.get("gt_mask"):
            continue  # an anomaly without a mask cannot be scored per pixel
        mpath = record_map_path(r)
        if not mpath or not Path(mpath).is_file():
            missing += 1
            continue
        amap = _load_map(mpath)
        finite = np.isfinite(amap)
        if not finite.any():
            missing += 1
            continue
        if not finite.all():  # outside a crop's footprint: the map's lowest value (as on its PNG)
            amap = np.where(finite, amap, float(amap[finite].min())).astype(np.float32)
        mask = load_mask(r.get("gt_mask"), size_hw=amap.shape)
        if mask.shape != amap.shape:  # a map not at the original resolution: bring it there
            amap = np.asarray(
                Image.fromarray(amap, mode="F").resize(mask.shape[::-1], Image.BILINEAR), dtype=np.float32
            )
        masks.append(_downscale(mask, map_side, nearest=True))
        maps.append(_downscale(amap, map_side, nearest=False))
    needed = len(masks) + missing
    if not masks:
        return {"pixel_auroc": None, "aupro": None, "pixel_coverage": 0.0,
                "notes": [f"no anomaly maps for {missing} images"]}
    out = pixel_metrics(masks, maps)
    out = {k: v for k, v in out.items() if k in ("pixel_auroc", "aupro", "notes")}
    out["pixel_coverage"] = len(masks) / needed
    if missing:
        out["notes"] = list(out.get("notes", [])) + [f"{missing} images without a usable anomaly map"]
    return out


def strict_auroc(records: list[dict[str, Any]]) -> float | None:
    """AUROC over every item, a failed item scored as the worst case for its label (None: one class)."""
    ok = [float(r["pred_score"]) for r in records if _is_ok(r)]
    labels = [int(r["gt_label"]) for r in records]
    if len(set(labels)) < 2:
        return None
    lo, hi = (min(ok) - 1.0, max(ok) + 1.0) if ok else (0.0, 1.0)
    scores = [float(r["pred_score"]) if _is_ok(r) else (lo if r["gt_label"] == 1 else hi) for r in records]
    return image_auroc(np.asarray(labels), np.asarray(scores))


def _is_ok(r: dict[str, Any]) -> bool:
    return r.get("status") == "ok" and r.get("pred_score") is not None


def _coverage(records: list[dict[str, Any]], ok: list[dict[str, Any]]) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for r in records:
        if not _is_ok(r):
            kind = r.get("error_kind") or "unknown"
            kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "n_total": len(records),
        "n_ok": len(ok),
        "coverage": len(ok) / len(records) if records else None,
        "n_errors": len(records) - len(ok),
        "errors_by_kind": dict(sorted(kinds.items())),
    }


def disputed_counts(ok: list[dict[str, Any]]) -> dict[str, Any]:
    """Verdicts whose model disagreed with the measured reading (`Verdict.disputed`): their count and share of
    the judged items with a model answer; None for both when no verdict had one (tools-only)."""
    with_model = [r for r in ok if r.get("score_source") not in (None, "tools")]
    if not with_model:
        return {"n_disputed": None, "n_with_model": None, "disputed_share": None}
    n = sum(1 for r in with_model if r.get("disputed"))
    return {"n_disputed": n, "n_with_model": len(with_model), "disputed_share": n / len(with_model)}


def _normal_only(ok: list[dict[str, Any]], ref_scores: list[float] | None, target_fpr: float | None) -> dict[str, Any] | None:
    if target_fpr is None:
        return None
    if not ref_scores:
        return {"target_fpr": target_fpr, "threshold": None, "n_reference_scores": 0,
                "note": "no reference leave-one-out scores (needs --shots >= 2)"}
    thr = normal_only_threshold(ref_scores, target_fpr)
    op = operating_point(
        [r["gt_label"] for r in ok], [float(r["pred_score"]) > thr for r in ok], [r.get("gt_defect_type") for r in ok]
    )
    return {"target_fpr": target_fpr, "threshold": thr, "n_reference_scores": len(ref_scores), **op}


def category_metrics(
    records: list[dict[str, Any]],
    pixel: bool = True,
    map_side: int = MAP_SIDE,
    ref_scores: list[float] | None = None,
    target_fpr: float | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    replicates: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics of one category's records of one repeat, with coverage, intervals and operating points.

    Args:
        records: slim records (`slim_record`) of every planned item, failed ones included.
        ref_scores: the references' leave-one-out `pred_score`s (for the normal-only threshold).
        target_fpr: false-positive rate the normal-only threshold aims at (None: not reported).
        n_boot / seed: bootstrap replicates and seed (0 replicates: no intervals).
        replicates: if given, the bootstrap replicates are stored into it (for the mean row).
    """
    ok = [r for r in records if _is_ok(r)]
    cov = _coverage(records, ok)
    if not ok:
        return {"n": 0, **cov, "auroc_strict": strict_auroc(records), "notes": ["every item failed"]}
    labels = [r["gt_label"] for r in ok]
    scores = [float(r["pred_score"]) for r in ok]
    flagged = [r.get("pred_label") == "anomalous" for r in ok]
    row = image_metrics(labels, scores, [int(f) for f in flagged])
    row.update(cov)
    row["auroc_strict"] = strict_auroc(records)
    name = str(records[0].get("category") or "")
    reps = bootstrap_replicates(labels, scores, n_boot, category_rng(seed, name)) if n_boot > 0 else None
    if replicates is not None and reps is not None:
        replicates.update(reps)
    row.update(interval_fields(reps))
    thresholds = sorted({float(r["threshold"]) for r in ok if r.get("threshold") is not None})
    row["operating_point"] = {
        "threshold": thresholds[0] if len(thresholds) == 1 else None,
        **operating_point(labels, flagged, [r.get("gt_defect_type") for r in ok]),
    }
    row["operating_point_normal_only"] = _normal_only(ok, ref_scores, target_fpr)
    row.update(disputed_counts(ok))
    if pixel:
        px = _pixel_for(ok, map_side)
        if px is not None:
            notes = row.get("notes", []) + px.pop("notes", [])
            row.update(px)
            row["notes"] = notes
    return row


def mean_values(values: list[Any]) -> Any:
    """Mean of one field over rows: numbers averaged (counts rounded), dicts field by field, else the first."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, dict) for v in present):
        keys: list[str] = []
        for v in present:
            keys.extend(k for k in v if k not in keys)
        return {k: mean_values([v.get(k) for v in present]) for k in keys}
    nums = [v for v in present if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(nums) == len(present):
        if all(isinstance(v, int) for v in nums):
            return int(round(float(np.mean(nums))))
        return float(np.mean(nums))
    return present[0]


def _mean_over_repeats(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    if len(rows) == 1:
        return rows[0], {}
    mean: dict[str, Any] = {}
    std: dict[str, float] = {}
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k != "notes" and k not in keys)
    for key in keys:
        vals = [r.get(key) for r in rows]
        mean[key] = mean_values(vals)
        nums = [v for v in vals if isinstance(v, float)]
        if nums and not (key == "n" or key.startswith("n_")):
            std[key] = float(np.std(nums))
    mean["notes"] = sorted({n for r in rows for n in r.get("notes", [])})
    return mean, std


def _mean_row(per_category: dict[str, dict[str, Any]], replicates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The mean row: `aggregate`'s means, pooled coverage, mean operating points, joint intervals.

    The mean row's intervals come from the same bootstrap replicates of every category (each resampled
    within its labels), averaged replicate by replicate: an interval for the mean AUROC itself.
    """
    mean = aggregate(per_category)["mean"]
    n_total = sum(int(r.get("n_total") or 0) for r in per_category.values())
    mean["coverage"] = (mean.get("n_ok", 0) / n_total) if n_total else None
    if mean.get("n_with_model"):  # pooled over the categories' verdicts with a model answer
        mean["disputed_share"] = mean["n_disputed"] / mean["n_with_model"]
    for key, drop in (("operating_point", ()), ("operating_point_normal_only", ("threshold",))):
        # each category's normal-only threshold is its own: their mean would be no threshold at all
        rows = [{k: v for k, v in (r.get(key) or {}).items() if k not in ("per_defect_type", "note", *drop)}
                for r in per_category.values() if r.get(key)]
        mean[key] = mean_values(rows) if rows else None
    usable = [rep for rep in replicates.values() if rep]
    if usable and len(usable) == len(per_category):
        joint = {m: np.mean([rep[m] for rep in usable], axis=0) for m in BOOT_METRICS}
        mean.update(interval_fields(joint))
    else:
        mean.update(interval_fields(None))
    return mean


def read_reference_scores(path: Path, config_hash: str | None) -> dict[tuple[int, str], list[float]]:
    """(repeat, category) -> the references' leave-one-out `pred_score`s (ok records only)."""
    out: dict[tuple[int, str], list[float]] = defaultdict(list)
    latest: dict[Any, dict[str, Any]] = {}
    for rec in iter_records(path):
        if config_hash is None or rec.get("config_hash") == config_hash:
            latest[record_key(rec)] = rec
    for rec in latest.values():
        if _is_ok(rec):
            out[(int(rec.get("repeat", 0)), rec["category"])].append(float(rec["pred_score"]))
    return dict(out)


def compute_metrics(
    results_path: str | Path,
    config_hash: str | None = None,
    categories: list[str] | None = None,
    pixel: bool = True,
    map_side: int = MAP_SIDE,
    target_fpr: float | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    planned: dict[Any, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Metrics of a run.

    Args:
        results_path: results.jsonl (``reference_scores.jsonl`` beside it is read when present).
        config_hash: only records of this config (None: all).
        categories: only these categories (None: all in the file).
        pixel: compute pixel AUROC / AUPRO where masks and maps exist.
        map_side: maps and masks are downscaled to this longest side for pixel metrics.
        target_fpr: report the operating point at the normal-only threshold for this FPR (None: not).
        n_boot / seed: bootstrap replicates (0: no intervals) and their seed.
        planned: record key -> ground-truth fields of every planned item (`evals.runner.planned_record`);
            when given, only these items count and one without a record counts as failed
            (``error_kind`` "missing"). None: every record of the file counts.

    Returns:
        {"per_category": {name: metrics averaged over repeats}, "mean": mean row,
         "std": {name: {metric: std over repeats}}, "repeats": R, "per_repeat": [aggregate rows],
         "bootstrap": {"n_boot", "seed", "confidence"}, "target_fpr"}.
    """
    results_path = Path(results_path)
    groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    latest: dict[Any, dict[str, Any]] = {}
    for offset, rec in iter_records(results_path, with_offset=True):
        if config_hash is not None and rec.get("config_hash") != config_hash:
            continue
        if categories and rec["category"] not in categories:
            continue
        latest[record_key(rec)] = slim_record(rec, offset)
    if planned is not None:
        latest = {k: latest.get(k) or {**v, "status": "error", "error_kind": "missing", "map_path": None}
                  for k, v in planned.items()}
    for (cat, _image, _hash, rep), slim in latest.items():
        groups[(rep, cat)].append(slim)
    ref_scores = read_reference_scores(results_path.parent / REFERENCE_SCORES, config_hash)
    repeats = sorted({r for r, _ in groups})
    cat_names = sorted({c for _, c in groups}, key=lambda c: (categories.index(c) if categories and c in categories else 0, c))
    per_repeat = []
    for rep in repeats:
        rows, reps = {}, {}
        for c in cat_names:
            if (rep, c) not in groups:
                continue
            reps[c] = {}
            rows[c] = category_metrics(groups[(rep, c)], pixel, map_side, ref_scores.get((rep, c)), target_fpr,
                                       n_boot, seed + rep, reps[c])
        per_repeat.append({"per_category": rows, "mean": _mean_row(rows, reps)})
    per_category: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for c in cat_names:
        rows = [pr["per_category"][c] for pr in per_repeat if c in pr["per_category"]]
        per_category[c], s = _mean_over_repeats(rows)
        if s:
            std[c] = s
    mean = _mean_row(per_category, {})
    if per_repeat:  # the mean's intervals: the joint bootstrap of each repeat, averaged over repeats
        mean.update({k: mean_values([pr["mean"].get(k) for pr in per_repeat])
                     for m in BOOT_METRICS for k in (f"{m}_lo", f"{m}_hi")})
    return {
        "per_category": per_category,
        "mean": mean,
        "std": std,
        "repeats": len(repeats),
        "per_repeat": per_repeat if len(repeats) > 1 else [],
        "bootstrap": {"n_boot": n_boot, "seed": seed, "confidence": 0.95,
                      "resampling": "images, with replacement, within each label"},
        "target_fpr": target_fpr,
    }
