"""The protocols run on the configured backbone: `--backbone` or ANOMALY_AGENT_BACKBONE, weights found as the
agent finds them (here a tiny random DINOv2-shaped ViT saved where ANOMALY_AGENT_DINOV2_WEIGHTS points)."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from evals.bench.patch_knn_protocol import protocol_settings, synthetic_splits
from tests.unit.test_backbone_dinov2 import hub_state, tiny_vit  # noqa: F401  (tiny_vit: a fixture)
from tools.backbones import DINOV2_FILE, UnknownBackboneError


def test_protocol_settings_follow_the_configuration(monkeypatch, tmp_path, no_caches):
    weights = tmp_path / DINOV2_FILE
    monkeypatch.setenv("ANOMALY_AGENT_BACKBONE", "dinov2_vit")
    monkeypatch.setenv("ANOMALY_AGENT_DINOV2_WEIGHTS", str(weights))
    monkeypatch.setenv("ANOMALY_AGENT_DEVICE", "cuda")
    settings = protocol_settings(3, tmp_path / "maps")
    assert settings.backbone == "dinov2_vit" and settings.dinov2_weights == weights
    assert settings.device == "cpu" and settings.threads == 3  # a protocol's timings are on the CPU
    assert settings.out_dir == tmp_path / "maps" and settings.bank_dir is None  # no bank kept between runs
    assert protocol_settings(1, tmp_path, "efficientnet_lite0").backbone == "efficientnet_lite0"


def test_survey_scores_collect_on_the_chosen_backbone(monkeypatch, tmp_path, tiny_vit, no_caches):  # noqa: F811
    from evals.survey_scores import collect_split

    torch.save(hub_state(tiny_vit), tmp_path / DINOV2_FILE)
    monkeypatch.setenv("ANOMALY_AGENT_DINOV2_WEIGHTS", str(tmp_path / DINOV2_FILE))
    split = synthetic_splits("dev", n_train=3, n_test=4)[0]
    out = io.StringIO()
    collect_split(split, (2,), 1, 1, out, (), backbone="dinov2_vit")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    (meta,) = [r for r in lines if r["kind"] == "set"]
    images = [r for r in lines if r["kind"] == "image"]
    assert meta["backbone"] == "dinov2_vit" and len(images) == len(split.test) == meta["n_test"]
    for row in images:
        for tool in ("patchcore", "patch_knn", "patch_knn_fine"):
            assert all(math.isfinite(v) for v in row[tool])


def test_an_unknown_backbone_is_named(tmp_path, no_caches):
    from evals.survey_scores import collect_split

    split = synthetic_splits("dev", n_train=2, n_test=2)[0]
    with pytest.raises(UnknownBackboneError, match="unknown backbone 'nope'; valid backbones: .*dinov2_vit"):
        collect_split(split, (1,), 1, 1, io.StringIO(), (), backbone="nope")
