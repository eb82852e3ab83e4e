"""Map utilities: resizing keeps geometry, regions come out where the map is high."""

from __future__ import annotations

import cv2
import numpy as np

from tools.images import ImageStore
from tools.maps import (
    box_iou,
    clip_box,
    map_to_root,
    overlay,
    regions_to_root,
    resize_map,
    top_regions,
    write_map_png,
    write_overlay,
)
from tools.types import Region


def test_resize_map_keeps_geometry():
    grid = np.zeros((8, 8), np.float32)
    grid[2, 5] = 1.0  # cell (row 2, col 5) -> pixels y 50..75, x 125..150 in a 200x200 image
    full = resize_map(grid, (200, 200))
    assert full.shape == (200, 200) and full.dtype == np.float32
    y, x = np.unravel_index(int(full.argmax()), full.shape)
    assert 50 <= y < 75 and 125 <= x < 150


def test_wide_blur_is_done_small_and_matches_a_full_size_blur():
    """A blur wider than MAX_BLUR_SIGMA runs at a smaller size (a 144 MP map's took minutes at full size);
    the result stays within 0.5% of the map's range of the full-size blur inside, 2% at the border (the
    reflected border is resampled), peak within 2 px."""
    grid = np.random.default_rng(0).random((12, 20)).astype(np.float32)
    grid[4, 13] = 3.0
    for (h, w), sigma in (((480, 800), 24.0), ((300, 1000), 40.0), ((200, 200), 3.0)):
        fast = resize_map(grid, (h, w), blur_sigma=sigma)
        full = cv2.GaussianBlur(cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR), (0, 0), sigma)
        assert fast.shape == (h, w) and fast.dtype == np.float32
        diff, spread = np.abs(fast - full), float(full.max() - full.min())
        assert float(diff.max()) < 0.02 * spread and float(diff[40:-40, 40:-40].max()) < 0.005 * spread
        peak = np.array(np.unravel_index(int(fast.argmax()), fast.shape))
        assert np.abs(peak - np.unravel_index(int(full.argmax()), full.shape)).max() <= 2


def test_top_regions_ranked_and_boxed():
    amap = np.zeros((100, 120), np.float32)
    amap[10:20, 30:50] = 1.0
    amap[60:80, 80:100] = 2.0
    regions = top_regions(amap, k=3)
    assert [r.bbox_xyxy for r in regions] == [(80, 60, 100, 80), (30, 10, 50, 20)]
    assert regions[0].score == 2.0
    assert top_regions(np.zeros((10, 10), np.float32)) == []


def test_top_regions_ignores_nan():
    amap = np.full((50, 50), np.nan, np.float32)
    amap[10:30, 10:30] = 0.0
    amap[15:20, 15:20] = 1.0
    (region,) = top_regions(amap, k=1)
    assert region.bbox_xyxy == (15, 15, 20, 20)


def test_write_pngs_and_overlay(tmp_path):
    amap = np.zeros((40, 60), np.float32)
    amap[5:10, 5:10] = 3.0
    path = write_map_png(amap, tmp_path / "m.png")
    grey = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert grey.shape == (40, 60) and grey[7, 7] == 255 and grey[30, 30] == 0
    img = np.full((40, 60, 3), 128, np.uint8)
    ov = overlay(img, amap, regions=[Region(bbox_xyxy=(5, 5, 10, 10))])
    assert ov.shape == img.shape and ov.dtype == np.uint8
    assert write_overlay(img, amap[::2, ::2], tmp_path / "o.png")


def test_map_to_root_places_crop_map():
    store = ImageStore()
    root = store.add_array(np.zeros((100, 200, 3), np.uint8), source="t", image_id="query")
    # a 2x upsampled crop of root box (50, 20, 100, 60)
    crop = store.add_array(
        np.zeros((80, 100, 3), np.uint8), source="crop", parent=root, offset_xy=(50, 20), scale=0.5
    )
    amap = np.zeros((80, 100), np.float32)
    amap[40:60, 20:40] = 1.0  # crop pixels -> root x 60..70, y 40..50
    root_id, full = map_to_root(store, crop, amap)
    assert root_id == "query" and full.shape == (100, 200)
    assert np.isnan(full[5, 5]) and np.isfinite(full[30, 70])
    (region,) = top_regions(full, k=1)
    assert box_iou(region.bbox_xyxy, (60, 40, 70, 50)) > 0.6
    (mapped,) = regions_to_root(store, crop, [Region(bbox_xyxy=(20, 40, 40, 60))])
    assert mapped.bbox_xyxy == (60, 40, 70, 50)


def test_clip_box():
    assert clip_box((-5, 2.5, 20.2, 8), 10, 10) == (0, 2, 10, 8)
    assert clip_box((20, 20, 30, 30), 10, 10) is None
