"""zoom: the crop is registered with geometry that maps back to the original pixels."""

from __future__ import annotations

import numpy as np
import pytest

from tools.base import ToolContext, ToolError
from tools.images import ImageStore
from tools.registry import create_tool


def _ctx():
    store = ImageStore()
    img = np.zeros((120, 160, 3), np.uint8)
    img[40:50, 100:120] = (255, 0, 0)  # planted red patch
    store.add_array(img, source="t", image_id="query")
    return ToolContext(store, query_id="query")


def test_zoom_crops_upsamples_and_maps_back():
    ctx = _ctx()
    out = create_tool("zoom").run({"box": [100, 40, 120, 50], "margin": 0.5, "max_side": 200}, ctx)
    crop = ctx.images.get(out.crop_id)
    assert out.image_ids == [out.crop_id] and crop.parent == "query"
    assert out.box_in_image == (90, 35, 130, 55)
    assert max(crop.width, crop.height) == 200 and out.magnification == pytest.approx(5.0)
    # the red patch sits in the middle half of the crop
    red = (crop.pixels[..., 0] > 128) & (crop.pixels[..., 1] < 64)
    ys, xs = np.nonzero(red)
    _, root_box = ctx.images.to_root(out.crop_id, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    assert all(abs(a - b) <= 1 for a, b in zip(root_box, (100, 40, 120, 50), strict=True))
    assert out.regions[0].bbox_xyxy == (90, 35, 130, 55)
    assert "5.00x" in out.summary


def test_zoom_of_zoom_maps_to_root():
    ctx = _ctx()
    tool = create_tool("zoom")
    first = tool.run({"box": [80, 20, 140, 80], "margin": 0, "max_side": 240}, ctx)
    second = tool.run({"image_id": first.crop_id, "box": [80, 80, 160, 120], "margin": 0}, ctx)
    assert second.regions[0].bbox_xyxy == (100, 40, 120, 50)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"box": [500, 500, 600, 600]}, "outside"),
        ({"box": [10, 10, 5, 20]}, "empty"),
        ({"box": [1, 2, 3]}, r"\[x0, y0, x1, y1\]"),
        ({"box": [0, 0, 10, 10], "image_id": "nope"}, "unknown image id"),
        ({"box": [0, 0, 10, 10], "zoom": 2}, "invalid arguments"),
    ],
)
def test_zoom_bad_input_is_tool_error(args, match):
    with pytest.raises(ToolError, match=match):
        create_tool("zoom").run(args, _ctx())
