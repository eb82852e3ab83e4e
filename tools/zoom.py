"""`zoom`: crop a box of an image (with a margin) and upsample it; the crop becomes a new image id."""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import Field

from tools.base import Tool, ToolContext, ToolError, ToolInput, ToolOutput
from tools.maps import clip_box
from tools.registry import register
from tools.types import Region


def crop_and_register(
    ctx: ToolContext,
    image_id: str,
    box: tuple[int, int, int, int],
    max_side: int,
    prefix: str,
    source: str,
    pixels: np.ndarray | None = None,
) -> tuple[str, float]:
    """Crop `box` (xyxy, pixels of `image_id`), resize so the longer side is `max_side`, register it.

    Args:
        pixels: optional HxWx3 uint8 array to crop instead of the stored pixels (e.g. masked).

    Returns:
        (new image id, scale = parent pixels per crop pixel).
    """
    img = ctx.images.get(image_id)
    src = img.pixels if pixels is None else pixels
    x0, y0, x1, y1 = box
    crop = src[y0:y1, x0:x1]
    h, w = crop.shape[:2]
    factor = max_side / max(h, w)
    new_w, new_h = max(1, round(w * factor)), max(1, round(h * factor))
    interp = cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA
    out = cv2.resize(crop, (new_w, new_h), interpolation=interp) if (new_w, new_h) != (w, h) else crop.copy()
    scale = w / new_w
    new_id = ctx.images.add_array(
        np.ascontiguousarray(out), source=source, prefix=prefix, parent=image_id,
        offset_xy=(float(x0), float(y0)), scale=scale,
    )
    return new_id, scale


def checked_box(ctx: ToolContext, image_id: str, box: list[float], margin: float = 0.0) -> tuple[int, int, int, int]:
    """Validate a model-given box (xyxy pixels of `image_id`), add a relative margin, clip it.

    Raises:
        ToolError: wrong length, or the box does not overlap the image.
    """
    img = ctx.images.get(image_id)
    if len(box) != 4:
        msg = f"box must be [x0, y0, x1, y1] in pixels of {image_id!r}, got {len(box)} numbers"
        raise ToolError(msg)
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        msg = f"box {box} is empty; need x1 > x0 and y1 > y0 (xyxy pixels)"
        raise ToolError(msg)
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    clipped = clip_box((x0 - mx, y0 - my, x1 + mx, y1 + my), img.width, img.height)
    if clipped is None:
        msg = (
            f"box {box} lies outside image {image_id!r} ({img.width}x{img.height} pixels); "
            "give xyxy pixel coordinates inside the image"
        )
        raise ToolError(msg)
    return clipped


@register
class Zoom(Tool):
    name = "zoom"
    description = (
        "Crop a box of an image (xyxy pixels of that image, plus a relative margin) and upsample it so "
        "small details become visible. Returns a new image id you can look at or pass to other tools."
    )

    class Input(ToolInput):
        image_id: str | None = Field(None, description="image to crop; default: the query")
        box: list[float] = Field(..., description="[x0, y0, x1, y1] in pixels of image_id")
        margin: float = Field(0.1, ge=0.0, le=2.0, description="extra border, fraction of box size")
        max_side: int = Field(512, ge=16, le=4096, description="longer side of the result, pixels")

    class Output(ToolOutput):
        crop_id: str
        box_in_image: tuple[int, int, int, int]
        magnification: float

    def _run(self, args: Input, ctx: ToolContext) -> Output:
        image_id = ctx.require_image(args.image_id)
        box = checked_box(ctx, image_id, args.box, args.margin)
        crop_id, scale = crop_and_register(ctx, image_id, box, args.max_side, "zoom", f"zoom of {image_id} {box}")
        crop = ctx.images.get(crop_id)
        root_id, root_box = ctx.images.to_root(crop_id, (0, 0, crop.width, crop.height))
        summary = (
            f"Zoomed {image_id} box {list(box)} ({box[2] - box[0]}x{box[3] - box[1]} px, margin "
            f"{args.margin:.2f}) to {crop.width}x{crop.height} px ({1 / scale:.2f}x) as image {crop_id!r}; "
            f"it covers {list(root_box)} of {root_id!r}."
        )
        return self.Output(
            summary=summary, image_ids=[crop_id], crop_id=crop_id, box_in_image=box,
            magnification=1.0 / scale, regions=[Region(bbox_xyxy=root_box, label="zoomed area")],
        )
