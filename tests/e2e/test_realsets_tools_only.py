"""Tools-only mode on the shared real images: AUROC above chance per category (a smoke test; the real
numbers come from `anomaly-agent eval` and the benchmarks). Skipped when ../shared is absent."""

from __future__ import annotations

import csv

import pytest
from sklearn.metrics import roc_auc_score

from agent.api import AnomalyAgent
from agent.config import load_config

PER_CLASS = 10  # test images per label and category, every n-th of the list


@pytest.mark.slow
@pytest.mark.parametrize("category", ["magnetic_tile", "elpv_mono"])
def test_tools_only_beats_chance(realsets, category):
    with open(realsets / "index.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] == category]
    refs = sorted(realsets / r["path"] for r in rows if r["split"] == "train")[:4]
    test = [r for r in rows if r["split"] == "test"]
    picked = []
    for label in ("0", "1"):
        items = [r for r in test if r["label"] == label]
        picked += items[:: max(1, len(items) // PER_CLASS)][:PER_CLASS]
    agent = AnomalyAgent.from_config(load_config(backend="none", memory_path="/nonexistent/memory", threads=2))
    labels, scores = [], []
    for r in picked:
        v = agent.detect(realsets / r["path"], category=category, references=refs)
        assert v.status == "ok", v.error
        labels.append(int(r["label"]))
        scores.append(v.pred_score)
    assert roc_auc_score(labels, scores) > 0.5
