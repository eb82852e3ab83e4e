"""reference_diff: aligns a shifted/rotated query and maps a planted defect at the right place."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tools.base import ToolContext, ToolError, ToolSettings
from tools.images import ImageStore
from tools.maps import box_iou
from tools.reference_diff import align
from tools.registry import create_tool

SIZE = 192
DEFECT = (120, 60, 150, 80)


def _scene() -> np.ndarray:
    rng = np.random.default_rng(7)
    img = np.full((SIZE, SIZE, 3), 200, np.uint8)
    for _ in range(40):
        x, y = (int(v) for v in rng.integers(0, SIZE, 2))
        colour = tuple(int(c) for c in rng.integers(0, 160, 3))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), int(rng.integers(3, 12)), colour, -1)
        else:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(4, 20)), y + int(rng.integers(4, 20))), colour, -1)
    return img


def _moved(img: np.ndarray, dx: float, dy: float, angle: float, seed: int) -> np.ndarray:
    m = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), angle, 1.0)
    m[:, 2] += (dx, dy)
    out = cv2.warpAffine(img, m, (SIZE, SIZE), borderMode=cv2.BORDER_REFLECT)
    noise = np.random.default_rng(seed).normal(0, 2, out.shape)
    return np.clip(out + noise, 0, 255).astype(np.uint8)


def _ctx(query: np.ndarray, n_refs: int = 2) -> ToolContext:
    store = ImageStore()
    store.add_array(query, source="q", image_id="query")
    scene = _scene()
    refs = [store.add_array(_moved(scene, 2 * i, -i, 1.0 * i, seed=i), source="r", image_id=f"ref{i}") for i in range(n_refs)]
    settings = ToolSettings(device="cpu")
    return ToolContext(store, query_id="query", reference_ids=refs, settings=settings, category="board")


def _defective() -> np.ndarray:
    img = _moved(_scene(), 6, 4, 3.0, seed=11)
    x0, y0, x1, y1 = DEFECT
    cv2.line(img, (x0, y0), (x1 - 1, y1 - 1), (20, 20, 20), 4)
    cv2.line(img, (x0, y1 - 1), (x1 - 1, y0), (20, 20, 20), 4)
    return img


def test_align_recovers_shift():
    scene = _scene()
    moved = _moved(scene, 6, 4, 3.0, seed=1)
    al = align(scene, moved)
    assert al.method != "identity" and al.ncc_after > al.ncc_before
    m = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), 3.0, 1.0)
    m[:, 2] += (6, 4)
    pt = np.array([50.0, 70.0, 1.0])
    got = al.H @ pt
    assert np.allclose(got[:2] / got[2], m @ pt, atol=1.5)


def test_align_falls_back_to_identity_on_flat_images():
    flat = np.full((64, 64, 3), 128, np.uint8)
    al = align(flat, flat)
    assert al.method == "identity" and al.note


def test_planted_defect_found_and_clean_scores_low(tmp_path):
    ctx = _ctx(_defective())
    ctx.settings.out_dir = tmp_path
    out = create_tool("reference_diff").run({}, ctx)
    assert out.alignment != "identity"
    assert box_iou(out.regions[0].bbox_xyxy, DEFECT) > 0.25
    grey = cv2.imread(out.map_path, cv2.IMREAD_UNCHANGED)
    assert grey.shape == (SIZE, SIZE)
    x0, y0, x1, y1 = DEFECT
    assert grey[y0:y1, x0:x1].max() == 255
    aligned = ctx.images.get(out.aligned_id)
    assert out.image_ids == [out.aligned_id] and aligned.pixels.shape == (SIZE, SIZE, 3)
    assert out.score > 0.5 and "nearest reference" in out.summary and "calibrated" in out.summary

    clean = create_tool("reference_diff").run({}, _ctx(_moved(_scene(), -4, 5, -2.0, seed=12)))
    assert clean.score < 0.5 < out.score


def test_one_reference_uses_augmented_calibration():
    out = create_tool("reference_diff").run({"max_side": 128}, _ctx(_defective(), n_refs=1))
    assert "augmented copies" in out.summary and out.reference_id == "ref0"


def test_needs_references():
    store = ImageStore()
    store.add_array(_scene(), source="q", image_id="query")
    with pytest.raises(ToolError, match="at least 1 normal reference"):
        create_tool("reference_diff").run({}, ToolContext(store, query_id="query"))
