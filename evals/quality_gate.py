"""The quality gate of `evals.gpu_check` (issue 22): a model configuration must not be worse than tools alone.

Two runs on the same images are compared item for item: the agent with the model (``openai``) and the
tools-only baseline (``none``). The gate fails when

- the model configuration's mean image AUROC (mean over categories) is below tools-only by more than
  chance explains: the upper end of the paired, stratified bootstrap 95% interval of
  ``AUROC(model) - AUROC(tools)`` is below 0 (each replicate resamples one category's anomalous and
  normal images with replacement and scores both runs on the same draw);
- or any of the model's verdicts lacks log-probabilities: ``score_source`` must be ``logprobs``
  ("label" means the server sent none; "logprobs-partial" means the label tokens carried under half
  the probability, so the reading is weak).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from evals.metrics import image_auroc
from evals.results import latest_records
from evals.uncertainty import CONFIDENCE, category_rng, percentile_interval

N_BOOT = 1000


def _ok_records(run_dir: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    records = latest_records(Path(run_dir) / "results.jsonl")
    return {(r["category"], r["image"], int(r.get("repeat") or 0)): r for r in records.values()
            if r.get("status") == "ok" and r.get("pred_score") is not None}


def paired_scores(model_dir: Path, tools_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{category: (labels, model scores, tools scores)} over the images both runs judged."""
    model, tools = _ok_records(model_dir), _ok_records(tools_dir)
    by_cat: dict[str, list[tuple[int, float, float]]] = {}
    for key in sorted(model.keys() & tools.keys()):
        by_cat.setdefault(key[0], []).append(
            (int(model[key]["gt_label"]), float(model[key]["pred_score"]), float(tools[key]["pred_score"])))
    return {cat: tuple(np.asarray(col) for col in zip(*rows, strict=True)) for cat, rows in by_cat.items()}


def auroc_difference(paired: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], n_boot: int = N_BOOT,
                     seed: int = 0) -> dict[str, Any]:
    """Mean image AUROC of both runs over the categories with both classes, their difference and its
    paired bootstrap interval: {"model", "tools", "delta", "delta_lo", "delta_hi", "categories"}."""
    cats = [c for c, (y, _, _) in sorted(paired.items()) if 0 < int(y.sum()) < len(y)]
    if not cats:
        return {"model": None, "tools": None, "delta": None, "delta_lo": None, "delta_hi": None, "categories": 0}
    model = float(np.mean([image_auroc(paired[c][0], paired[c][1]) for c in cats]))
    tools = float(np.mean([image_auroc(paired[c][0], paired[c][2]) for c in cats]))
    deltas = np.zeros(n_boot)
    for c in cats:
        y, m, t = paired[c]
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        rng = category_rng(seed, c)
        yb = np.r_[np.ones(pos.size, np.int64), np.zeros(neg.size, np.int64)]
        for b in range(n_boot):
            idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
            deltas[b] += image_auroc(yb, m[idx]) - image_auroc(yb, t[idx])
    deltas /= len(cats)
    lo, hi = percentile_interval(deltas, CONFIDENCE)
    return {"model": model, "tools": tools, "delta": model - tools, "delta_lo": lo, "delta_hi": hi,
            "categories": len(cats)}


def score_sources(run_dir: Path) -> Counter:
    """How many ok verdicts of a run came from each ``score_source``."""
    return Counter(str(r.get("score_source")) for r in _ok_records(run_dir).values())


def check_quality(model_dir: Path, tools_dir: Path, n_boot: int = N_BOOT) -> tuple[dict[str, Any], list[str]]:
    """(the comparison, the gate's failures: empty when it passes). See the module docstring."""
    diff = auroc_difference(paired_scores(model_dir, tools_dir), n_boot)
    sources = score_sources(model_dir)
    diff["score_sources"] = dict(sources)
    problems = []
    if diff["delta"] is None:
        problems.append("no category has both normal and anomalous images judged by both runs, so AUROC is "
                        "undefined. Fix: use a set with both classes in every category (the named set has them)")
    elif diff["delta_hi"] < 0:
        problems.append(
            f"the model configuration's mean image AUROC {diff['model']:.3f} is below tools-only {diff['tools']:.3f} "
            f"by {-diff['delta']:.3f}, beyond the bootstrap 95% interval of the difference "
            f"[{diff['delta_lo']:+.3f}, {diff['delta_hi']:+.3f}]. Fix: the model makes verdicts worse than the "
            "tools alone; check its answers in the compare report, or use a stronger model")
    lacking = sum(n for source, n in sources.items() if source != "logprobs")
    if lacking or not sources:
        shown = ", ".join(f"{source} {n}" for source, n in sorted(sources.items())) or "no verdicts"
        problems.append(
            f"{lacking} of {sum(sources.values())} model verdicts lack log-probabilities (score_source: {shown}). "
            "Fix: serve the model with logprobs (vLLM does; `anomaly-agent serve-model` passes --max-logprobs 20), "
            "and check that the verdict's label token is where the answer starts")
    return diff, problems


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def quality_table(summary: dict[str, dict[str, Any]], diff: dict[str, Any]) -> str:
    """The runs (backend, model, mean image AUROC, score sources) and the model-minus-tools line."""
    lines = [f"{'run':>7}  {'backend':<8} {'model':<28} {'image AUROC':>11}  score sources"]
    for name, row in summary.items():
        sources = ", ".join(f"{k} {v}" for k, v in sorted((row.get("score_sources") or {}).items())) or "-"
        lines.append(f"{name:>7}  {str(row.get('backend')):<8} {str(row.get('served_model')):<28} "
                     f"{_fmt(row.get('image_auroc')):>11}  {sources}")
    if diff.get("delta") is not None:
        lines.append(f"model - tools: {diff['delta']:+.3f} (bootstrap 95% interval [{diff['delta_lo']:+.3f}, "
                     f"{diff['delta_hi']:+.3f}], {diff['categories']} categories, paired by image)")
    return "\n".join(lines)
