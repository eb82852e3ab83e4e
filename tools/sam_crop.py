"""`sam_crop`: segment the object or region at a box / points / anomaly-map peak, return mask and crop.

With a SAM checkpoint, segment-anything's `SamPredictor` (image embedded once per image and session)
is prompted by the box and/or points; the best of its three masks (predicted IoU) is kept. Its box
(plus margin) is cropped and upsampled as a new image id, and the mask is written as a 0/255 PNG at
the root image's resolution. Without a checkpoint the prompt's box is cropped as it is and the
output says `segmented: false`.
"""

from __future__ import annotations

import threading

import numpy as np
from pydantic import Field

from tools.base import Tool, ToolContext, ToolError, ToolInput, ToolOutput
from tools.maps import map_to_root, top_regions, write_mask_png
from tools.registry import register
from tools.types import Region
from tools.zoom import checked_box, crop_and_register

POINT_BOX_FRAC = 0.1  # without SAM, a point prompt crops a square of this fraction of the longer side


class SamSession:
    """A `SamPredictor` whose image embeddings are cached per image digest (embed once, query many)."""

    def __init__(self, sam) -> None:
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(sam)
        self._digest: str | None = None
        self._lock = threading.Lock()  # the predictor holds one image at a time: runs take turns

    def segment(self, pixels: np.ndarray, digest: str, cache, box: np.ndarray | None,
                points: np.ndarray | None) -> tuple[np.ndarray, float]:
        """`set_image` then `predict`, as one step (concurrent runs share this session)."""
        with self._lock:
            self.set_image(pixels, digest, cache)
            return self.predict(box, points)

    def set_image(self, pixels: np.ndarray, digest: str, cache: dict) -> None:
        """Embed `pixels` (HxWx3 uint8 RGB) unless cached in `cache` under its digest."""
        if self._digest == digest:
            return
        key = ("sam_embedding", id(self.predictor.model), digest)
        p = self.predictor
        if key in cache:
            p.reset_image()
            p.features, p.original_size, p.input_size = cache[key]
            p.is_image_set = True
        else:
            p.set_image(pixels, image_format="RGB")
            cache[key] = (p.features, p.original_size, p.input_size)
        self._digest = digest

    def predict(self, box: np.ndarray | None, points: np.ndarray | None) -> tuple[np.ndarray, float]:
        """Best mask (HxW bool) and its predicted IoU for a box (xyxy) and/or positive points (Nx2)."""
        labels = None if points is None else np.ones(len(points), np.int64)
        masks, scores, _ = self.predictor.predict(
            point_coords=points, point_labels=labels, box=box, multimask_output=True
        )
        best = int(np.argmax(scores))
        return masks[best].astype(bool), float(scores[best])


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight xyxy box of a boolean mask (x1/y1 exclusive), None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@register
class SamCrop(Tool):
    name = "sam_crop"
    description = (
        "Segment the object or defect at a box, at points, or at the peak of the patch_knn anomaly map "
        "(SAM). Returns the mask, its box in original pixels and a tight, upsampled crop as a new image "
        "id. Without a SAM checkpoint it returns a plain box crop (segmented: false)."
    )

    class Input(ToolInput):
        image_id: str | None = Field(None, description="image to segment; default: the query")
        box: list[float] | None = Field(None, description="[x0, y0, x1, y1] pixels of image_id")
        points: list[list[float]] | None = Field(None, description="[[x, y], ...] pixels on the object")
        from_map_peak: bool = Field(False, description="prompt at the patch_knn anomaly-map peak")
        margin: float = Field(0.15, ge=0.0, le=2.0, description="crop border, fraction of the box size")
        max_side: int = Field(512, ge=16, le=4096, description="longer side of the crop, pixels")

    class Output(ToolOutput):
        segmented: bool
        crop_id: str
        mask_box: tuple[int, int, int, int]
        mask_area_px: int | None = None
        sam_iou: float | None = None
        prompt: str

    def _setup(self, ctx: ToolContext) -> None:
        from tools.sam_models import load_sam

        sam, self.no_sam_reason = load_sam(ctx.settings)
        self.session = SamSession(sam) if sam is not None else None

    def _prompt(self, args: Input, ctx: ToolContext, image_id: str):
        """(box or None, points Nx2 or None, words) in pixels of `image_id`."""
        img = ctx.images.get(image_id)
        box = None
        points = None
        words = []
        if args.box is not None:
            box = np.array(checked_box(ctx, image_id, args.box), np.float32)
            words.append(f"box {[int(v) for v in box]}")
        if args.points:
            pts = np.array(args.points, np.float32)
            if pts.ndim != 2 or pts.shape[1] != 2:
                msg = f"points must be [[x, y], ...] in pixels of {image_id!r}, got {args.points}"
                raise ToolError(msg)
            inside = (pts[:, 0] >= 0) & (pts[:, 0] < img.width) & (pts[:, 1] >= 0) & (pts[:, 1] < img.height)
            if not inside.all():
                msg = f"points {pts[~inside].tolist()} lie outside {image_id!r} ({img.width}x{img.height})"
                raise ToolError(msg)
            points = pts
            words.append(f"{len(pts)} point(s)")
        if args.from_map_peak:
            from tools.registry import create_tool

            amap = create_tool("patch_knn").anomaly_map(ctx, image_id)
            y, x = np.unravel_index(int(np.nanargmax(amap)), amap.shape)
            peak = np.array([[x, y]], np.float32)
            points = peak if points is None else np.concatenate([points, peak])
            words.append(f"patch_knn map peak ({x}, {y})")
            if box is None:
                region = next((r for r in top_regions(amap, k=3) if _contains(r.bbox_xyxy, x, y)), None)
                if region is not None:
                    box = np.array(region.bbox_xyxy, np.float32)
        if box is None and points is None:
            raise ToolError("sam_crop needs a prompt: give box, points, or from_map_peak=true")
        return box, points, ", ".join(words)

    def _run(self, args: Input, ctx: ToolContext) -> Output:
        image_id = ctx.require_image(args.image_id)
        img = ctx.images.get(image_id)
        box, points, prompt = self._prompt(args, ctx, image_id)
        mask = None
        iou = None
        if self.session is not None:
            mask, iou = self.session.segment(img.pixels, img.digest, ctx.cache, box, points)
            tight = mask_box(mask)
            if tight is None:
                mask = None  # SAM found nothing: fall back to the prompt's box
        if mask is not None:
            tight = mask_box(mask)
        else:
            tight = tuple(int(v) for v in box) if box is not None else _point_box(points, img.width, img.height)
        crop_box = checked_box(ctx, image_id, list(tight), args.margin)
        crop_id, scale = crop_and_register(
            ctx, image_id, crop_box, args.max_side, "sam", f"sam_crop of {image_id} {list(crop_box)}"
        )
        root_id, root_box = ctx.images.to_root(image_id, tight)
        mask_path = None
        if mask is not None:
            _, root_mask = map_to_root(ctx.images, image_id, mask.astype(np.float32), fill=0.0)
            mask_path = write_mask_png(
                root_mask > 0.5, ctx.out_dir / f"sam_mask_{root_id}_{crop_id}.png"
            )
        crop = ctx.images.get(crop_id)
        region = Region(
            bbox_xyxy=root_box, score=iou, mask_path=mask_path, label="SAM mask" if mask is not None else "box crop"
        )
        if mask is not None:
            head = (
                f"SAM segmented {int(mask.sum())} px of {image_id!r} from {prompt} (predicted IoU {iou:.2f}); "
                f"mask box {list(root_box)} in {root_id!r} pixels, {100 * mask.mean():.1f}% of the image."
            )
        else:
            why = self.no_sam_reason if self.session is None else "SAM returned an empty mask"
            head = (
                f"Not segmented ({why.split('. Fix')[0]}); cropped the prompt's box {list(root_box)} of "
                f"{root_id!r} from {prompt} instead."
            )
        summary = (
            f"{head} Crop {crop_id!r}: {crop.width}x{crop.height} px ({1 / scale:.2f}x) of box "
            f"{list(crop_box)} with margin {args.margin:.2f}."
        )
        return self.Output(
            summary=summary, regions=[region], image_ids=[crop_id], segmented=mask is not None,
            crop_id=crop_id, mask_box=root_box, mask_area_px=None if mask is None else int(mask.sum()),
            sam_iou=iou, prompt=prompt,
        )


def _contains(box: tuple[int, int, int, int], x: int, y: int) -> bool:
    return box[0] <= x < box[2] and box[1] <= y < box[3]


def _point_box(points: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """A square around the points' bounding box, at least POINT_BOX_FRAC of the longer side."""
    half = POINT_BOX_FRAC * max(width, height) / 2
    x0, y0 = points.min(axis=0) - half
    x1, y1 = points.max(axis=0) + half
    return (
        int(max(0, np.floor(x0))), int(max(0, np.floor(y0))),
        int(min(width, np.ceil(x1))), int(min(height, np.ceil(y1))),
    )
