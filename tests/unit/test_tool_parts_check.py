"""parts_check on drawn arrangements: 4 coloured discs in slots; a missing disc, a wrong colour."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tools.base import ToolContext, ToolError, ToolSettings
from tools.images import ImageStore
from tools.maps import box_iou
from tools.parts_check import colour_name
from tools.registry import create_tool

SLOTS = [(50, 50), (150, 50), (50, 150), (150, 150)]
BLUE, RED, GREEN = (40, 70, 200), (210, 40, 40), (40, 170, 60)
R = 22


def _tray(colours, seed: int, jitter: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((200, 200, 3), 200, np.uint8)
    for (x, y), colour in zip(SLOTS, colours, strict=True):
        if colour is None:
            continue
        dx, dy = (int(v) for v in rng.integers(-jitter, jitter + 1, 2))
        cv2.circle(img, (x + dx, y + dy), R, colour, -1)
    return np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)


def _slot_box(i: int) -> tuple[int, int, int, int]:
    x, y = SLOTS[i]
    return (x - R, y - R, x + R, y + R)


def _ctx(query: np.ndarray, n_refs: int = 2) -> ToolContext:
    store = ImageStore()
    store.add_array(query, source="q", image_id="query")
    refs = [store.add_array(_tray([BLUE, BLUE, BLUE, GREEN], seed=20 + i), source="r", image_id=f"ref{i}")
            for i in range(n_refs)]
    return ToolContext(store, query_id="query", reference_ids=refs, settings=ToolSettings(sam_checkpoint=None))


def test_colour_names():
    lab = cv2.cvtColor(np.array([[BLUE, RED, GREEN, (128, 128, 128)]], np.uint8), cv2.COLOR_RGB2LAB)[0].astype(float)
    lab[:, 0] *= 100 / 255
    lab[:, 1:] -= 128
    assert [colour_name(c) for c in lab] == ["blue", "red", "green", "grey"]


def test_clean_tray_scores_low():
    out = create_tool("parts_check").run({}, _ctx(_tray([BLUE, BLUE, BLUE, GREEN], seed=1)))
    assert out.counts_by_colour == {"blue": 3, "green": 1}
    assert out.deviations == [] and out.score < 0.5
    assert "no deviation" in out.summary


def test_missing_disc_is_reported_in_words_and_place():
    out = create_tool("parts_check").run({}, _ctx(_tray([BLUE, None, BLUE, GREEN], seed=2)))
    assert out.counts_by_colour["blue"] == 2
    assert "2 blue parts; every reference has 3" in out.deviations
    assert out.score > 0.5
    assert box_iou(out.regions[0].bbox_xyxy, _slot_box(1)) > 0.5
    assert "missing blue part" in out.summary


def test_wrong_colour_is_reported():
    out = create_tool("parts_check").run({}, _ctx(_tray([BLUE, BLUE, RED, GREEN], seed=3), n_refs=1))
    assert out.score > 0.5
    assert any("red" in d for d in out.deviations)
    assert box_iou(out.regions[0].bbox_xyxy, _slot_box(2)) > 0.5
    assert "augmented copies" in out.summary


def test_needs_references():
    store = ImageStore()
    store.add_array(_tray([BLUE] * 4, seed=0), source="q", image_id="query")
    with pytest.raises(ToolError, match="reference"):
        create_tool("parts_check").run({}, ToolContext(store, query_id="query"))


def test_sam_automatic_masks_path_runs(tmp_path):
    import torch

    from tools.sam_models import TINY_SAM_TYPE, build_tiny_sam

    torch.manual_seed(0)
    path = tmp_path / "tiny_sam.pth"
    torch.save(build_tiny_sam().state_dict(), path)
    ctx = _ctx(_tray([BLUE, BLUE, BLUE, GREEN], seed=1), n_refs=1)
    ctx.settings = ToolSettings(sam_model_type=TINY_SAM_TYPE, sam_checkpoint=path, device="cpu")
    out = create_tool("parts_check").run({"work_side": 96}, ctx)
    assert out.segmentation == "SAM automatic masks"  # random weights: the masks themselves mean nothing
    assert out.n_parts == sum(out.counts_by_colour.values()) and 0.0 <= out.score <= 1.0
