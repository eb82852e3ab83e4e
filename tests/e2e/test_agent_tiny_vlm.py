"""A tiny random VLM through the transformers backend runs the whole graph. Output is random: assert structure."""

from __future__ import annotations

import pytest

from agent.api import AnomalyAgent
from agent.config import load_config
from evals.tiny_vlms import build_tiny_vlm
from tests.agent_fixtures import write_set


@pytest.mark.parametrize("family", ["qwen3_vl"])
def test_tiny_vlm_runs_the_graph(tmp_path, family):
    images = write_set(tmp_path)
    model_dir = build_tiny_vlm(family, tmp_path / family)
    cfg = load_config(backend="transformers", local_model=str(model_dir), memory_path="/nonexistent/memory",
                      threads=2, max_model_calls=3, image_max_side=64, max_new_tokens=32)
    agent = AnomalyAgent.from_config(cfg)
    assert agent.backend.name == "transformers"
    v = agent.detect(images["bad"], category="texture", references=images["refs"])
    assert v.status == "ok", v.error
    assert v.pred_label in ("normal", "anomalous") and 0.0 <= v.pred_score <= 1.0
    assert v.usage.model_calls >= 2 and v.evidence[0].tool == "patch_knn"
    assert v.explanation
