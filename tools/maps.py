"""Shared anomaly-map utilities: resize, find regions, write PNGs, draw overlays.

Conventions: a map is an HxW float32 array, higher = more anomalous, in the tool's own units.
Boxes are xyxy pixels with x1/y1 exclusive (as `tools.types.Region`).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tools.images import ImageStore
from tools.types import Region

MAX_BLUR_SIGMA = 16.0  # px: `resize_map` blurs at the size where its sigma is at most this, then resizes


def resize_map(amap: np.ndarray, size_hw: tuple[int, int], blur_sigma: float = 0.0) -> np.ndarray:
    """Resize a (patch-grid) map to the original image size.

    Args:
        amap: hxw float map (any float dtype).
        size_hw: (H, W) target size, pixels.
        blur_sigma: optional Gaussian smoothing after resizing, in target pixels (0: none).

    Returns:
        HxW float32 map (bilinear; a cell's value lands on the pixels it covers).
    """
    amap = np.asarray(amap, dtype=np.float32)
    if amap.ndim != 2:
        msg = f"expected a 2-D map, got shape {amap.shape}"
        raise ValueError(msg)
    h, w = int(size_hw[0]), int(size_hw[1])
    if blur_sigma > 0:
        # a wide blur of a bilinear upsampling is as smooth at a smaller size: blur where sigma is at most
        # MAX_BLUR_SIGMA px (never below the map's own grid), then resize once; a 144 MP map's blur took minutes
        shrink = min(1.0, MAX_BLUR_SIGMA / float(blur_sigma))
        mid_h, mid_w = min(h, max(amap.shape[0], round(h * shrink))), min(w, max(amap.shape[1], round(w * shrink)))
        mid = cv2.resize(amap, (mid_w, mid_h), interpolation=cv2.INTER_LINEAR) if amap.shape != (mid_h, mid_w) \
            else amap.copy()
        amap = cv2.GaussianBlur(mid, (0, 0), sigmaX=float(blur_sigma) * mid_w / w, sigmaY=float(blur_sigma) * mid_h / h)
    out = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR) if amap.shape != (h, w) else amap.copy()
    return out.astype(np.float32, copy=False)


def top_regions(
    amap: np.ndarray,
    k: int = 3,
    threshold: float | None = None,
    rel_threshold: float = 0.5,
    min_area: int = 4,
    label: str = "map peak",
) -> list[Region]:
    """The top-k regions of a map as boxes: threshold, connected components, rank by peak value.

    Args:
        amap: HxW float map.
        k: at most this many regions.
        threshold: absolute threshold in map units; None uses `rel_threshold`.
        rel_threshold: fraction between the map's median (0) and maximum (1) used when
            `threshold` is None.
        min_area: components smaller than this (pixels) are dropped unless nothing else remains.
        label: text put into each `Region.label`.

    Returns:
        Regions sorted by peak value (descending); `score` is the component's peak map value.
    """
    amap = np.asarray(amap, dtype=np.float32)
    finite = np.isfinite(amap)
    if not finite.any():
        return []
    vals = amap[finite]
    vmax = float(vals.max())
    if threshold is None:
        med = float(np.median(vals))
        if vmax <= med:
            return []
        threshold = med + rel_threshold * (vmax - med)
    binary = (finite & (amap >= threshold)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return []
    peaks = np.full(n, -np.inf)
    np.maximum.at(peaks, labels[binary > 0], amap[binary > 0])
    comps = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        comps.append((float(peaks[i]), area, (x, y, x + w, y + h)))
    if not comps:
        return []
    big = [c for c in comps if c[1] >= min_area]
    comps = big or comps
    comps.sort(key=lambda c: -c[0])
    return [Region(bbox_xyxy=box, score=peak, label=label) for peak, _, box in comps[:k]]


def normalise_map(amap: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Scale a map to [0, 1] (by vmin/vmax, else its finite min/max; NaN -> 0). Returns HxW float32."""
    amap = np.asarray(amap, dtype=np.float32)
    finite = amap[np.isfinite(amap)]
    if finite.size == 0:
        return np.zeros_like(amap, dtype=np.float32)
    lo = float(finite.min()) if vmin is None else float(vmin)
    hi = float(finite.max()) if vmax is None else float(vmax)
    amap = np.where(np.isfinite(amap), amap, lo)  # NaN (outside a crop) shows as the lowest value
    if hi <= lo:
        return np.zeros_like(amap, dtype=np.float32)
    return np.clip((amap - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def float_map_path(png_path: str | Path) -> Path:
    """Where `write_map_png` puts the raw float map of a display PNG: ``<same stem>.npy``."""
    return Path(png_path).with_suffix(".npy")


def read_float_map(path: str | Path) -> np.ndarray | None:
    """HxW float32 map of a map PNG: the raw ``.npy`` beside it when there is one, else the PNG's grey
    levels / 255 (float images as they are); None when neither file exists."""
    raw = float_map_path(path)
    if raw.is_file():
        return np.asarray(np.load(raw), dtype=np.float32)
    if not Path(path).is_file():
        return None
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("F", "I", "I;16"):
            return np.asarray(im, dtype=np.float32)
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def write_map_png(amap: np.ndarray, path: str | Path, vmin: float | None = None, vmax: float | None = None) -> str:
    """Write a map for people and for metrics: an 8-bit grey display PNG and the raw float map.

    The PNG is scaled to 0..255 by vmin/vmax (give a fixed scale, e.g. from the references'
    calibration, so that maps of one category compare by eye) or else by its own range. The raw map,
    HxW float32 in the tool's units (NaN outside a crop's footprint), goes to ``<stem>.npy`` beside it
    (`float_map_path`); pixel metrics read that one, never the rescaled PNG.

    Returns:
        The PNG's path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = np.rint(normalise_map(amap, vmin, vmax) * 255.0).astype(np.uint8)
    if not cv2.imwrite(str(path), grey):
        msg = f"could not write map PNG to {path}"
        raise OSError(msg)
    np.save(float_map_path(path), np.asarray(amap, dtype=np.float32))
    return str(path)


def write_mask_png(mask: np.ndarray, path: str | Path) -> str:
    """Write a boolean HxW mask as a 0/255 PNG. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), (np.asarray(mask) > 0).astype(np.uint8) * 255):
        msg = f"could not write mask PNG to {path}"
        raise OSError(msg)
    return str(path)


def overlay(
    image: np.ndarray,
    amap: np.ndarray,
    alpha: float = 0.5,
    regions: list[Region] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Blend a map (JET colours) over an RGB image and draw region boxes.

    Args:
        image: HxWx3 uint8 RGB.
        amap: map of any size (resized to HxW).
        alpha: weight of the map colours.
        regions: boxes to draw (red, 2 px), in the image's pixels.

    Returns:
        HxWx3 uint8 RGB.
    """
    h, w = image.shape[:2]
    norm = normalise_map(resize_map(amap, (h, w)), vmin, vmax)
    heat = cv2.applyColorMap(np.rint(norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(image.astype(np.uint8), 1.0 - alpha, heat, alpha, 0.0)
    for region in regions or []:
        x0, y0, x1, y1 = region.bbox_xyxy
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (255, 0, 0), 2)
    return out


def write_overlay(
    image: np.ndarray, amap: np.ndarray, path: str | Path, regions: list[Region] | None = None, alpha: float = 0.5
) -> str:
    """`overlay` written as a PNG. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = overlay(image, amap, alpha=alpha, regions=regions)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        msg = f"could not write overlay PNG to {path}"
        raise OSError(msg)
    return str(path)


def map_to_root(store: ImageStore, image_id: str, amap: np.ndarray, fill: float = np.nan) -> tuple[str, np.ndarray]:
    """Place a map computed on a derived image (a crop) into its root image's pixel grid.

    Args:
        store: the image store.
        image_id: the image the map was computed on (HxW of that image, or any size: resized).
        amap: the map.
        fill: value outside the derived image's footprint (NaN by default; `top_regions` ignores it).

    Returns:
        (root id, map of the root's HxW, float32).
    """
    img = store.get(image_id)
    amap = resize_map(amap, (img.height, img.width))
    root_id, box = store.to_root(image_id, (0, 0, img.width, img.height))
    if root_id == image_id:
        return root_id, amap
    root = store.get(root_id)
    out = np.full((root.height, root.width), fill, dtype=np.float32)
    x0, y0, x1, y1 = box
    if x1 > x0 and y1 > y0:
        # exact footprint (before rounding) in root pixels, to place the resampled map
        fx0, fy0, fx1, fy1 = _footprint(store, image_id)
        scale_x = (fx1 - fx0) / img.width
        scale_y = (fy1 - fy0) / img.height
        m = np.array([[scale_x, 0.0, fx0], [0.0, scale_y, fy0]], dtype=np.float64)
        warped = cv2.warpAffine(
            amap, m, (root.width, root.height), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan,
        )
        inside = np.isfinite(warped)
        out[inside] = warped[inside]
    return root_id, out


def _footprint(store: ImageStore, image_id: str) -> tuple[float, float, float, float]:
    """Unrounded box of `image_id` in its root's pixels."""
    cur = store.get(image_id)
    x0, y0, x1, y1 = 0.0, 0.0, float(cur.width), float(cur.height)
    while cur.parent is not None:
        ox, oy = cur.offset_xy
        s = cur.scale
        x0, y0, x1, y1 = ox + x0 * s, oy + y0 * s, ox + x1 * s, oy + y1 * s
        cur = store.get(cur.parent)
    return x0, y0, x1, y1


def regions_to_root(store: ImageStore, image_id: str, regions: list[Region]) -> list[Region]:
    """Regions in a derived image's pixels -> regions in its root image's pixels."""
    out = []
    for region in regions:
        _, box = store.to_root(image_id, region.bbox_xyxy)
        out.append(region.model_copy(update={"bbox_xyxy": box}))
    return out


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two xyxy boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int] | None:
    """Round a float xyxy box outwards and clip it to a WxH image; None when nothing is left."""
    x0, y0, x1, y1 = box
    out = (
        int(np.clip(np.floor(min(x0, x1)), 0, width)),
        int(np.clip(np.floor(min(y0, y1)), 0, height)),
        int(np.clip(np.ceil(max(x0, x1)), 0, width)),
        int(np.clip(np.ceil(max(y0, y1)), 0, height)),
    )
    if out[2] <= out[0] or out[3] <= out[1]:
        return None
    return out


def publish_map(
    ctx, tool: str, image_id: str, amap: np.ndarray, k: int = 3, label: str = "map peak", **region_kw
) -> tuple[str, list[Region], np.ndarray]:
    """Put a map computed on `image_id` into its root image's grid, write it, and find its regions.

    Args:
        ctx: the `ToolContext` (images, out_dir).
        tool: tool name, used in the file name.
        image_id: image the map was computed on (a root image or a derived crop).
        amap: map of any size (resized to `image_id`'s HxW first).
        k, label, region_kw: passed to `top_regions` (k = 0: no regions).

    Returns:
        (PNG path of the root-resolution map, regions in root pixels, root map HxW float32 with NaN
        outside a crop's footprint).
    """
    import uuid

    root_id, root_map = map_to_root(ctx.images, image_id, amap)
    path = write_map_png(root_map, Path(ctx.out_dir) / f"{tool}_{root_id}_{image_id}_{uuid.uuid4().hex[:8]}.png")
    regions = top_regions(root_map, k=k, label=label, **region_kw) if k > 0 else []
    return path, regions, root_map
