"""Metrics of a results file: per category, averaged over repeats, with the mean row.

Reads results.jsonl in one streaming pass keeping only (label, score, predicted label) per item;
pixel metrics load one category's masks and maps at a time, downscaled to `map_side` pixels.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evals.datasets import load_mask
from evals.metrics import aggregate, image_metrics, pixel_metrics
from evals.results import iter_records, record_key

MAP_SIDE = 256


def record_map_path(record: dict[str, Any]) -> str | None:
    """The anomaly map of a record: its own ``map_path``, else the first evidence map."""
    if record.get("map_path"):
        return record["map_path"]
    for ev in record.get("evidence") or []:
        if ev.get("map_path"):
            return ev["map_path"]
    return None


SLIM_FIELDS = ("image", "category", "repeat", "gt_label", "gt_mask", "status", "pred_score", "pred_label")


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
    with Image.open(path) as im:
        if im.mode in ("F", "I", "I;16"):
            return np.asarray(im, dtype=np.float32)
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


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
        mask = load_mask(r.get("gt_mask"), size_hw=amap.shape)
        if mask.shape != amap.shape:  # a map not at the original resolution: bring it there
            amap = np.asarray(
                Image.fromarray(amap, mode="F").resize(mask.shape[::-1], Image.BILINEAR), dtype=np.float32
            )
        masks.append(_downscale(mask, map_side, nearest=True))
        maps.append(_downscale(amap, map_side, nearest=False))
    if not masks:
        return {"pixel_auroc": None, "aupro": None, "notes": [f"no anomaly maps for {missing} images"]}
    out = pixel_metrics(masks, maps)
    out = {k: v for k, v in out.items() if k in ("pixel_auroc", "aupro", "notes")}
    if missing:
        out["notes"] = list(out.get("notes", [])) + [f"{missing} images without a usable anomaly map"]
    return out


def category_metrics(records: list[dict[str, Any]], pixel: bool = True, map_side: int = MAP_SIDE) -> dict[str, Any]:
    """Image (and pixel) metrics of one category's records of one repeat; errors are counted, not scored."""
    ok = [r for r in records if r.get("status") == "ok" and r.get("pred_score") is not None]
    n_errors = len(records) - len(ok)
    if not ok:
        return {"n": 0, "n_errors": n_errors, "notes": ["every item failed"]}
    row = image_metrics(
        [r["gt_label"] for r in ok],
        [float(r["pred_score"]) for r in ok],
        [1 if r.get("pred_label") == "anomalous" else 0 for r in ok],
    )
    row["n_errors"] = n_errors
    if pixel:
        px = _pixel_for(ok, map_side)
        if px is not None:
            notes = row.get("notes", []) + px.pop("notes", [])
            row.update(px)
            row["notes"] = notes
    return row


def _mean_over_repeats(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    if len(rows) == 1:
        return rows[0], {}
    mean: dict[str, Any] = {}
    std: dict[str, float] = {}
    keys = [k for k in rows[0] if k != "notes"]
    for key in keys:
        vals = [r.get(key) for r in rows]
        nums = [v for v in vals if isinstance(v, int | float) and not isinstance(v, bool)]
        if not nums:
            mean[key] = None
            continue
        if key == "n" or key.startswith("n_"):
            mean[key] = int(round(float(np.mean(nums))))
            continue
        mean[key] = float(np.mean(nums))
        std[key] = float(np.std(nums))
    mean["notes"] = sorted({n for r in rows for n in r.get("notes", [])})
    return mean, std


def compute_metrics(
    results_path: str | Path,
    config_hash: str | None = None,
    categories: list[str] | None = None,
    pixel: bool = True,
    map_side: int = MAP_SIDE,
) -> dict[str, Any]:
    """Metrics of a run.

    Args:
        results_path: results.jsonl.
        config_hash: only records of this config (None: all).
        categories: only these categories (None: all in the file).
        pixel: compute pixel AUROC / AUPRO where masks and maps exist.
        map_side: maps and masks are downscaled to this longest side for pixel metrics.

    Returns:
        {"per_category": {name: metrics averaged over repeats}, "mean": mean row,
         "std": {name: {metric: std over repeats}}, "repeats": R, "per_repeat": [aggregate rows]}.
    """
    groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    latest: dict[Any, dict[str, Any]] = {}
    for offset, rec in iter_records(Path(results_path), with_offset=True):
        if config_hash is not None and rec.get("config_hash") != config_hash:
            continue
        if categories and rec["category"] not in categories:
            continue
        latest[record_key(rec)] = slim_record(rec, offset)
    for (cat, _image, _hash, rep), slim in latest.items():
        groups[(rep, cat)].append(slim)
    repeats = sorted({r for r, _ in groups})
    cat_names = sorted({c for _, c in groups}, key=lambda c: (categories.index(c) if categories and c in categories else 0, c))
    per_repeat = []
    for rep in repeats:
        rows = {c: category_metrics(groups[(rep, c)], pixel, map_side) for c in cat_names if (rep, c) in groups}
        per_repeat.append(aggregate(rows))
    per_category: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for c in cat_names:
        rows = [pr["per_category"][c] for pr in per_repeat if c in pr["per_category"]]
        per_category[c], s = _mean_over_repeats(rows)
        if s:
            std[c] = s
    agg = aggregate(per_category)
    return {
        "per_category": agg["per_category"],
        "mean": agg["mean"],
        "std": std,
        "repeats": len(repeats),
        "per_repeat": per_repeat if len(repeats) > 1 else [],
    }
