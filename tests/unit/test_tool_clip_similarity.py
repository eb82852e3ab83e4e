"""clip_similarity with a tiny random open_clip model (no weights): structure, maps, few-shot localisation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tools.base import ToolContext, ToolError, ToolSettings
from tools.clip_models import clip_weights_status, register_tiny_clip_config
from tools.clip_similarity import build_prompts, window_boxes
from tools.images import ImageStore
from tools.maps import box_iou
from tools.registry import create_tool

DEFECT = (70, 20, 100, 50)  # xyxy in the query


def _texture(seed: int, size: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    for y in range(0, size, 16):  # a regular tile pattern with a little noise
        for x in range(0, size, 16):
            cv2.rectangle(img, (x + 2, y + 2), (x + 13, y + 13), (90, 110, 140), -1)
    noise = rng.normal(0, 4, img.shape)
    return np.clip(img + 60 + noise, 0, 255).astype(np.uint8)


def _ctx(query: np.ndarray, n_refs: int) -> ToolContext:
    torch.manual_seed(0)
    name = register_tiny_clip_config()
    store = ImageStore()
    store.add_array(query, source="q", image_id="query")
    refs = [store.add_array(_texture(10 + i), source=f"r{i}", image_id=f"ref{i}") for i in range(n_refs)]
    settings = ToolSettings(clip_model=name, clip_pretrained="random", device="cpu")
    return ToolContext(store, query_id="query", reference_ids=refs, settings=settings, category="metal_tile")


def _defective() -> np.ndarray:
    img = _texture(1)
    x0, y0, x1, y1 = DEFECT
    img[y0:y1, x0:x1] = (250, 40, 40)
    return img


def test_prompts_inject_category():
    normal, anomalous = build_prompts("metal_tile")
    assert "a photo of a flawless metal tile." in normal
    assert "a photo of the damaged metal tile." in anomalous
    assert len(normal) > len(anomalous) > 20


def test_windows_cover_image():
    boxes = window_boxes(0.3)
    assert boxes.min() == 0.0 and boxes.max() == pytest.approx(1.0)
    assert len(boxes) == 36


def test_fewshot_map_finds_planted_defect(tmp_path):
    ctx = _ctx(_defective(), n_refs=2)
    ctx.settings.out_dir = tmp_path
    out = create_tool("clip_similarity").run({}, ctx)
    assert out.n_references == 2 and out.calibrated and out.n_windows == 9 + 36
    grey = cv2.imread(out.fewshot_map_path, cv2.IMREAD_UNCHANGED)
    assert grey.shape == (128, 128)  # original resolution
    assert box_iou(out.regions[0].bbox_xyxy, DEFECT) > 0.2
    x0, y0, x1, y1 = DEFECT
    assert grey[y0:y1, x0:x1].mean() > 2 * grey[90:, :50].mean()
    assert "zero-shot P(anomalous | 'metal_tile')" in out.summary and "calibrated" in out.summary
    assert 0.0 <= out.score <= 1.0 and out.zero_shot_map_path

    clean = _ctx(_texture(2), n_refs=2)
    clean_out = create_tool("clip_similarity").run({}, clean)
    assert clean_out.score < 0.5 < out.score


def test_single_reference_and_zero_shot_paths():
    ctx = _ctx(_defective(), n_refs=1)
    tool = create_tool("clip_similarity")
    one = tool.run({"window_fracs": [0.5]}, ctx)
    assert one.calibrated and "augmented copies" in one.summary
    zs = tool.run({"use_references": False}, ctx)
    assert not zs.calibrated and zs.fewshot_map_path is None and zs.map_path == zs.zero_shot_map_path
    assert zs.score == pytest.approx(0.5 * (zs.zero_shot_p_anomalous + zs.max_window_p_anomalous))


def test_crop_map_lands_in_root_coordinates(tmp_path):
    ctx = _ctx(_defective(), n_refs=1)
    ctx.settings.out_dir = tmp_path
    crop = create_tool("zoom").run({"box": [64, 0, 128, 64], "margin": 0, "max_side": 128}, ctx).crop_id
    out = create_tool("clip_similarity").run({"image_id": crop, "window_fracs": [0.5]}, ctx)
    grey = cv2.imread(out.map_path, cv2.IMREAD_UNCHANGED)
    assert grey.shape == (128, 128)
    x0, y0, x1, y1 = out.regions[0].bbox_xyxy
    assert x0 >= 64 and y1 <= 64


def test_missing_weights_is_a_clear_error(tmp_path):
    store = ImageStore()
    store.add_array(_texture(0), source="q", image_id="query")
    settings = ToolSettings(clip_pretrained=str(tmp_path / "nope.pt"))
    ok, detail = clip_weights_status(settings)
    assert not ok and "ANOMALY_AGENT_CLIP_PRETRAINED" in detail
    with pytest.raises(ToolError, match="ANOMALY_AGENT_CLIP_PRETRAINED"):
        create_tool("clip_similarity").run({}, ToolContext(store, query_id="query", settings=settings))
    assert clip_weights_status(ToolSettings(clip_model=register_tiny_clip_config(), clip_pretrained="random"))[0]
