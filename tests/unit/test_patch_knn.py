"""patch_knn on synthetic textures where the answer is known (real EfficientNet-Lite0 weights)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tools.base import ToolContext, ToolError, ToolSettings
from tools.images import ImageStore
from tools.maps import box_iou
from tools.patch_knn import PatchKnn, PatchKnnConfig, image_score, working_size
from tools.registry import create_tool

H, W = 144, 176  # not square, not a multiple of 32: the map must still come back at HxW
DEFECT = (100, 40, 124, 64)  # xyxy


def texture(seed: int) -> np.ndarray:
    """A woven-looking grey texture with random phase and mild noise, HxWx3 uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    img = 128 + 35 * np.sin(xx / 3.0 + px) * np.sin(yy / 3.0 + py) + rng.normal(0, 4, (H, W))
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def with_defect(seed: int) -> np.ndarray:
    img = texture(seed).copy()
    x0, y0, x1, y1 = DEFECT
    cv2.ellipse(img, ((x0 + x1) // 2, (y0 + y1) // 2), ((x1 - x0) // 2, (y1 - y0) // 2), 0, 0, 360,
                (25, 25, 25), -1)
    return img


def make_ctx(tmp_path, n_refs: int) -> ToolContext:
    store = ImageStore()
    refs = [store.add_array(texture(s), f"ref {s}", image_id=f"ref{s}") for s in range(n_refs)]
    store.add_array(with_defect(100), "defect", image_id="defect")
    store.add_array(texture(101), "clean", image_id="clean")
    settings = ToolSettings(device="cpu", out_dir=tmp_path)
    return ToolContext(store, query_id="defect", reference_ids=refs, settings=settings)


@pytest.fixture(scope="module")
def tool():
    return PatchKnn()


def test_planted_defect_found_in_place_and_clean_scores_low(tmp_path, tool):
    ctx = make_ctx(tmp_path, 3)
    bad = tool.run({}, ctx)
    assert tool.last_map is not None and tool.last_map.shape == (H, W)
    assert tool.last_map.dtype == np.float32
    clean = tool.run({"image_id": "clean"}, ctx)
    assert bad.score > 0.5 > clean.score
    assert bad.raw_score > clean.raw_score
    assert bad.regions and bad.regions[0].label == "above normal range"
    assert box_iou(bad.regions[0].bbox_xyxy, DEFECT) > 0.2
    # the map PNG is at the original resolution and lights up at the defect
    png = cv2.imread(bad.map_path, cv2.IMREAD_GRAYSCALE)
    assert png.shape == (H, W)
    x0, y0, x1, y1 = DEFECT
    assert png[y0:y1, x0:x1].mean() > 2 * png.mean()
    assert "0.5 is reached" in bad.summary and "box" in bad.summary
    assert bad.n_references == 3 and bad.calibration == "leave-one-out"
    assert bad.normal_range[0] <= bad.normal_range[1] < bad.raw_score


def test_k1_calibrates_on_augmented_copies(tmp_path, tool):
    ctx = make_ctx(tmp_path, 1)
    bad = tool.run({}, ctx)
    clean = tool.run({"image_id": "clean"}, ctx)
    bank = tool.reference_bank(ctx)
    assert bank.calibration == "augmented copies" and len(bank.normal_scores) >= 5
    assert bad.calibration == "augmented copies"
    assert bad.score > 0.5 and bad.score > clean.score
    assert box_iou(bad.regions[0].bbox_xyxy, DEFECT) > 0.2


def test_references_embedded_once_per_session(tmp_path, tool):
    ctx = make_ctx(tmp_path, 2)
    tool.run({}, ctx)
    banks = [k for k in ctx.cache if k[0] == "patch_knn:bank"]
    feats = len([k for k in ctx.cache if k[0] == "patch_knn:feat"])
    bank = ctx.cache[banks[0]]
    tool.run({"image_id": "clean"}, ctx)
    assert [k for k in ctx.cache if k[0] == "patch_knn:bank"] == banks
    assert ctx.cache[banks[0]] is bank
    assert len([k for k in ctx.cache if k[0] == "patch_knn:feat"]) == feats + 1  # only the new query


def test_needs_references_and_known_ids(tmp_path, tool):
    ctx = make_ctx(tmp_path, 0)
    with pytest.raises(ToolError, match="--refs"):
        tool.run({}, ctx)
    ctx = make_ctx(tmp_path, 1)
    with pytest.raises(ToolError, match="unknown image id"):
        tool.run({"image_id": "nope"}, ctx)
    with pytest.raises(ToolError, match="invalid arguments"):
        tool.run({"top_k_regions": 0}, ctx)


def test_registered_and_schema():
    knn = create_tool("patch_knn")
    assert isinstance(knn, PatchKnn)
    props = knn.input_schema()["properties"]
    assert set(props) == {"image_id", "top_k_regions"}


def test_helpers():
    grid = np.zeros((10, 10), np.float32)
    grid[0, 0] = 10.0
    assert image_score(grid, 0) == 10.0
    assert image_score(grid, 0.02) == pytest.approx(5.0)
    cfg = PatchKnnConfig(resolution=320, scale_mode="refs")
    assert working_size(100, 200, cfg, ref_long_side=200) == (160, 320)
    assert working_size(100, 400, cfg, ref_long_side=200) == (160, 640)  # same scale as refs
    assert working_size(100, 200, PatchKnnConfig(resolution=320, scale_mode="fit"), 999) == (160, 320)
    assert working_size(50, 50, PatchKnnConfig(square=True, resolution=224), None) == (224, 224)
    with pytest.raises(ToolError, match="layer_norm"):
        PatchKnn(PatchKnnConfig(layer_norm="patch+bogus"))
    with pytest.raises(ToolError, match="augment"):
        PatchKnn(PatchKnnConfig(augment="rot7"))
