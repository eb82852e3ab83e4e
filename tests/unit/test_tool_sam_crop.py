"""sam_crop: tiny random SAM end to end (structure), box-crop fallback, and map-peak prompting."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tools.base import ToolContext, ToolError, ToolSettings
from tools.images import ImageStore
from tools.maps import box_iou
from tools.registry import create_tool
from tools.sam_models import TINY_SAM_TYPE, build_tiny_sam, sam_weights_status

DEFECT = (100, 40, 124, 64)


def _image(defect: bool = False, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((160, 200, 3), 120, np.uint8)
    cv2.circle(img, (60, 90), 30, (30, 160, 60), -1)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    if defect:
        x0, y0, x1, y1 = DEFECT
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (240, 240, 30), -1)
    return img


def _ctx(settings: ToolSettings, img: np.ndarray, refs: int = 0) -> ToolContext:
    store = ImageStore()
    store.add_array(img, source="q", image_id="query")
    ref_ids = [store.add_array(_image(seed=10 + i), source="r", image_id=f"ref{i}") for i in range(refs)]
    return ToolContext(store, query_id="query", reference_ids=ref_ids, settings=settings)


@pytest.fixture(scope="module")
def tiny_sam_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    torch.save(build_tiny_sam().state_dict(), path)
    return path


def test_tiny_sam_predictor_end_to_end(tiny_sam_file, tmp_path):
    settings = ToolSettings(sam_model_type=TINY_SAM_TYPE, sam_checkpoint=tiny_sam_file, device="cpu", out_dir=tmp_path)
    assert sam_weights_status(settings)[0]
    ctx = _ctx(settings, _image())
    tool = create_tool("sam_crop")
    out = tool.run({"box": [30, 60, 90, 120], "points": [[60, 90]]}, ctx)
    assert out.sam_iou is not None  # the predictor ran
    crop = ctx.images.get(out.crop_id)
    assert crop.parent == "query" and max(crop.width, crop.height) == 512
    if out.segmented:
        mask = cv2.imread(out.regions[0].mask_path, cv2.IMREAD_UNCHANGED)
        assert mask.shape == (160, 200) and set(np.unique(mask)) <= {0, 255}
        ys, xs = np.nonzero(mask)
        assert out.mask_box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert out.mask_area_px == int((mask > 0).sum())
    # the embedding is computed once per image: a second prompt reuses it
    assert sum(1 for k in ctx.cache if k[0] == "sam_embedding") == 1
    tool.run({"points": [[150, 30]]}, ctx)
    assert sum(1 for k in ctx.cache if k[0] == "sam_embedding") == 1


def test_no_checkpoint_gives_box_crop(tmp_path):
    settings = ToolSettings(sam_checkpoint=tmp_path / "missing.pth", device="cpu")
    ok, detail = sam_weights_status(settings)
    assert not ok and "ANOMALY_AGENT_SAM_CHECKPOINT" in detail
    ctx = _ctx(settings, _image())
    out = create_tool("sam_crop").run({"box": [30, 60, 90, 120], "margin": 0.0, "max_side": 120}, ctx)
    assert not out.segmented and out.mask_box == (30, 60, 90, 120) and out.regions[0].mask_path is None
    crop = ctx.images.get(out.crop_id)
    assert (crop.width, crop.height) == (120, 120)
    assert "Not segmented" in out.summary and "2.00x" in out.summary


def test_map_peak_prompt_finds_planted_defect(tmp_path):
    settings = ToolSettings(sam_checkpoint=tmp_path / "missing.pth", device="cpu")
    ctx = _ctx(settings, _image(defect=True), refs=2)
    out = create_tool("sam_crop").run({"from_map_peak": True, "margin": 0.0}, ctx)
    assert "patch_knn map peak" in out.prompt
    assert box_iou(out.mask_box, DEFECT) > 0.3


def test_bad_prompts_are_tool_errors(tmp_path):
    settings = ToolSettings(sam_checkpoint=tmp_path / "missing.pth")
    ctx = _ctx(settings, _image())
    tool = create_tool("sam_crop")
    with pytest.raises(ToolError, match="needs a prompt"):
        tool.run({}, ctx)
    with pytest.raises(ToolError, match="outside"):
        tool.run({"points": [[500, 10]]}, ctx)
