"""Synthetic MVTec-style anomaly datasets for tests and demos.

Four categories, two kinds:
- textures with structural defects: `fabric` (a plain-weave cloth; hole, stain, thread, cut) and
  `metal` (brushed grain; scratch, crack, stain, hole);
- objects/arrangements with logical anomalies besides structural ones: `tray` (coloured parts in
  slots; missing_part, extra_part, wrong_colour, swapped, scratch) and `board` (components on a
  PCB-like board; missing_component, extra_component, wrong_colour, swapped, scratch).

Normal images vary the way real captures do: lighting gain, offset, gradient and vignetting, a
slight colour cast, texture phase and scale, small shifts and rotations, per-item placement jitter
and sensor noise, so a global statistic (mean or std intensity) does not separate normal from
anomalous images.

Layout (MVTec AD): `OUT/<category>/{train/good, test/good, test/<defect>}/NNN.png` and
`OUT/<category>/ground_truth/<defect>/NNN_mask.png` (0/255, one per test anomaly; for a logical
anomaly the mask covers the missing, extra, recoloured or swapped part).

Determinism: every image draws from its own numpy Generator seeded by (seed, category, split,
index), and PNGs are written with fixed settings and no metadata, so the same arguments give
byte-identical files.
"""

from __future__ import annotations

import json
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from agent.errors import UserInputError

Rgb = tuple[float, float, float]
RenderFn = Callable[[np.random.Generator, int, str | None], tuple[np.ndarray, np.ndarray | None]]

DEFAULT_SIZE = 256
DEFAULT_N_TRAIN = 8
DEFAULT_N_TEST = 12
MARKER = ".synthetic.json"  # written in each category folder; lets a rerun replace it safely
_PNG_COMPRESS_LEVEL = 6
_SPLIT_CODES = {"train": 0, "test": 1}


# ----------------------------------------------------------------------------- drawing helpers


def _alpha(size: int, draw: Callable[[np.ndarray], None]) -> np.ndarray:
    """Draw with OpenCV (value 255, anti-aliased where asked) on a blank layer; return HxW [0, 1]."""
    layer = np.zeros((size, size), np.uint8)
    draw(layer)
    return layer.astype(np.float32) / 255.0


def _bbox(alpha: np.ndarray) -> tuple[slice, slice] | None:
    """Row and column slices of the nonzero part of an HxW layer (None when all zero)."""
    rows = np.flatnonzero(alpha.max(axis=1) > 0)
    if rows.size == 0:
        return None
    cols = np.flatnonzero(alpha.max(axis=0) > 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _blend(img: np.ndarray, alpha: np.ndarray, colour: Rgb | np.ndarray) -> np.ndarray:
    """In place: img = img*(1-alpha) + colour*alpha; img HxWx3 float32, alpha HxW, colour RGB
    or HxWx3. Returns img."""
    box = _bbox(alpha)
    if box is None:
        return img
    a = alpha[box][..., None]
    col = np.asarray(colour, np.float32)
    if col.ndim == 3:
        col = col[box]
    img[box] = img[box] * (1.0 - a) + col * a
    return img


def _shade(img: np.ndarray, alpha: np.ndarray, gain: float = 1.0, add: float = 0.0) -> np.ndarray:
    """In place: img = img*(1 + gain_delta*alpha) + add*alpha, with gain_delta = gain - 1.
    Returns img."""
    box = _bbox(alpha)
    if box is None:
        return img
    a = alpha[box][..., None]
    img[box] = img[box] * (1.0 + (gain - 1.0) * a) + add * a
    return img


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian noise blurred by `sigma` pixels: HxW float32."""
    n = rng.standard_normal((size, size)).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return (n - n.mean()) / (n.std() + 1e-6)


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    if px <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def _blob_polygon(
    rng: np.random.Generator, center: np.ndarray, radius: float, roughness: float = 0.25
) -> np.ndarray:
    """An irregular closed outline around `center`: (K, 2) int32 xy points."""
    k = 48
    angles = np.linspace(0.0, 2 * np.pi, k, endpoint=False)
    harmonics = np.zeros(k)
    for h in range(2, 6):
        harmonics += rng.normal(0, roughness / h) * np.cos(h * angles + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(1.0 + harmonics, 0.4, 1.8)
    pts = center[None, :] + np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)
    return np.round(pts).astype(np.int32)


def _curve(
    rng: np.random.Generator, start: np.ndarray, angle: float, length: float, bend: float
) -> np.ndarray:
    """A gently bending polyline: (K, 2) int32 xy points."""
    k = max(8, int(length / 4))
    heading = angle + np.cumsum(rng.normal(0, bend, k))
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * (length / k)
    pts = start[None, :] + np.vstack([[0.0, 0.0], np.cumsum(steps, axis=0)])
    return np.round(pts).astype(np.int32)


def _jagged(rng: np.random.Generator, start: np.ndarray, angle: float, length: float) -> np.ndarray:
    """A crack-like zig-zag polyline: (K, 2) int32 xy points."""
    k = max(6, int(length / 5))
    heading = angle + rng.normal(0, 0.5, k)
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * rng.uniform(3, 7, (k, 1))
    pts = start[None, :] + np.vstack([[0.0, 0.0], np.cumsum(steps, axis=0)])
    return np.round(pts).astype(np.int32)


def _polyline(size: int, pts: np.ndarray, thickness: int, antialias: bool = True) -> np.ndarray:
    line = cv2.LINE_AA if antialias else cv2.LINE_8
    return _alpha(size, lambda c: cv2.polylines(c, [pts], False, 255, thickness, line))


def _rect_alpha(size: int, p0: tuple[int, int], p1: tuple[int, int], thickness: int) -> np.ndarray:
    """An axis-aligned rectangle layer (corners xy, pixels; thickness -1 = filled)."""
    return _alpha(size, lambda c: cv2.rectangle(c, p0, p1, 255, thickness, cv2.LINE_AA))


def _luminance(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114], np.float32)


def _place(rng: np.random.Generator, size: int, margin: float) -> np.ndarray:
    """A random point at least `margin` pixels from the border: (2,) float xy."""
    return rng.uniform(margin, size - margin, 2)


# ----------------------------------------------------------------------------- capture effects


def _capture(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting (gain, offset, linear gradient, vignetting, colour cast) and sensor noise.

    Args:
        img: HxWx3 float32 scene, about [0, 1].

    Returns:
        HxWx3 uint8.
    """
    size = img.shape[0]
    gain = rng.uniform(0.75, 1.25)
    offset = rng.uniform(-0.06, 0.06)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    proj = np.cos(theta) * ramp[None, :] + np.sin(theta) * ramp[:, None]
    light = 1.0 + rng.uniform(0.0, 0.2) * proj / np.sqrt(2)
    cx, cy = rng.uniform(-0.3, 0.3, 2)
    r2 = ((ramp[None, :] - cx) ** 2 + (ramp[:, None] - cy) ** 2) / 2
    light = light * (1.0 - rng.uniform(0.0, 0.25) * r2)
    cast = 1.0 + rng.normal(0.0, 0.02, 3).astype(np.float32)
    out = img * (gain * light)[..., None] * cast + offset
    out = out + rng.normal(0.0, rng.uniform(0.006, 0.02), out.shape).astype(np.float32)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def _warp(
    img: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, s: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """A small rigid motion of the whole scene: rotation +-3 deg, shift +-6 px, scale +-2 %."""
    size = img.shape[0]
    m = cv2.getRotationMatrix2D(
        (size / 2, size / 2), rng.uniform(-3.0, 3.0), rng.uniform(0.98, 1.02)
    )
    m[:, 2] += rng.uniform(-6.0, 6.0, 2) * s
    img = cv2.warpAffine(
        img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    if mask is not None:
        moved = cv2.warpAffine(
            mask.astype(np.float32), m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0
        )
        mask = moved >= 0.5
    return img, mask


# ----------------------------------------------------------------------------- fabric


def _fabric(rng: np.random.Generator, size: int) -> np.ndarray:
    """A plain weave: blue warp over/under light weft; HxWx3 float32."""
    s = size / DEFAULT_SIZE
    period = 8.0 * s * rng.uniform(0.97, 1.03)
    theta = np.deg2rad(rng.uniform(-3.0, 3.0))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 1)
    v = (-xx * np.sin(theta) + yy * np.cos(theta)) / period + rng.uniform(0, 1)
    cu, cv_ = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    over = ((cu + cv_) % 2).astype(bool)
    warp_profile = np.sin(np.pi * (u - cu)) ** 0.6 * (1 + 0.08 * np.sin(6 * np.pi * v))
    weft_profile = np.sin(np.pi * (v - cv_)) ** 0.6 * (1 + 0.08 * np.sin(6 * np.pi * u))
    warp_gain = 1.0 + rng.normal(0, 0.05, 256).astype(np.float32)
    weft_gain = 1.0 + rng.normal(0, 0.05, 256).astype(np.float32)
    warp_profile = warp_profile * warp_gain[cu % 256]
    weft_profile = weft_profile * weft_gain[cv_ % 256]
    warp_col = np.array([0.22, 0.30, 0.52], np.float32) * rng.uniform(0.95, 1.05)
    weft_col = np.array([0.62, 0.63, 0.66], np.float32) * rng.uniform(0.95, 1.05)
    img = np.where(
        over[..., None],
        warp_col * (0.35 + 0.75 * warp_profile[..., None]),
        weft_col * (0.35 + 0.75 * weft_profile[..., None]),
    )
    fibre = 0.03 * _smooth_noise(rng, size, 0.8) + 0.03 * _smooth_noise(rng, size, 20 * s)
    return (img + fibre[..., None]).astype(np.float32)


def _fabric_defect(
    img: np.ndarray, rng: np.random.Generator, defect: str
) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    s = size / DEFAULT_SIZE
    center = _place(rng, size, 48 * s)
    if defect == "hole":
        poly = _blob_polygon(rng, center, rng.uniform(4, 12) * s, roughness=0.35)
        hard = _alpha(size, lambda c: cv2.fillPoly(c, [poly], 255, cv2.LINE_8)) > 0.5
        soft = _alpha(size, lambda c: cv2.fillPoly(c, [poly], 255, cv2.LINE_AA))
        backings = [(0.05, 0.05, 0.06), (0.88, 0.87, 0.84), (0.40, 0.42, 0.48)]  # last: subtle
        backing = backings[int(rng.integers(len(backings)))]
        # frayed thread ends around the rim
        frayed = np.zeros_like(soft)
        for _ in range(8):
            a = rng.uniform(0, 2 * np.pi)
            p0 = poly[rng.integers(len(poly))].astype(np.float64)
            pts = _curve(rng, p0, a, rng.uniform(4, 9) * s, 0.3)
            frayed = np.maximum(frayed, _polyline(size, pts, max(1, round(s))))
        img = _blend(img, soft, backing)
        img = _blend(img, frayed * 0.8, (0.70, 0.70, 0.72))
        return img, _dilate(hard | (frayed > 0.5), max(1, round(s)))
    if defect == "stain":
        poly = _blob_polygon(rng, center, rng.uniform(10, 22) * s, roughness=0.3)
        hard = _alpha(size, lambda c: cv2.fillPoly(c, [poly], 255, cv2.LINE_8))
        soft = cv2.GaussianBlur(hard, (0, 0), 2.5 * s)
        colours = [(0.35, 0.22, 0.10), (0.08, 0.08, 0.08), (0.92, 0.90, 0.82), (0.50, 0.10, 0.16)]
        colour = np.asarray(colours[rng.integers(len(colours))], np.float32)
        lum = _luminance(img)
        stained = colour * (lum / max(float(lum.mean()), 1e-3))[..., None]
        strength = rng.uniform(0.25, 0.8)  # faint to strong
        return _blend(img, soft * strength, stained), soft > 0.5
    if defect == "thread":
        pts = _curve(rng, center, rng.uniform(0, 2 * np.pi), rng.uniform(50, 110) * s, 0.15)
        pts = np.clip(pts, 2, size - 3)
        line = _polyline(size, pts, max(1, round(rng.uniform(1.5, 2.5) * s)))
        threads = [(0.08, 0.06, 0.05), (0.93, 0.92, 0.88), (0.30, 0.36, 0.60)]  # last: subtle
        colour = threads[int(rng.integers(len(threads)))]
        return _blend(img, line, colour), _dilate(line > 0.3, max(1, round(s)))
    if defect == "cut":
        angle = rng.uniform(0, np.pi)
        half = rng.uniform(8, 22) * s
        d = np.array([np.cos(angle), np.sin(angle)]) * half
        p0, p1 = np.round(center - d).astype(int), np.round(center + d).astype(int)
        width = max(2, round(rng.uniform(2, 4) * s))
        slit = _alpha(size, lambda c: cv2.line(c, tuple(p0), tuple(p1), 255, width, cv2.LINE_AA))
        edge = _alpha(
            size, lambda c: cv2.line(c, tuple(p0), tuple(p1), 255, width + 3, cv2.LINE_AA)
        )
        img = _blend(img, edge * 0.6, (0.80, 0.80, 0.82))
        img = _blend(img, slit, (0.04, 0.04, 0.05))
        return img, _dilate(edge > 0.5, 1)
    raise AssertionError(defect)


def _render_fabric(
    rng: np.random.Generator, size: int, defect: str | None
) -> tuple[np.ndarray, np.ndarray | None]:
    img = _fabric(rng, size)
    return _fabric_defect(img, rng, defect) if defect else (img, None)


# ----------------------------------------------------------------------------- metal


def _metal(rng: np.random.Generator, size: int) -> np.ndarray:
    """Brushed metal: grain along a near-horizontal direction, a soft specular band; HxWx3."""
    s = size / DEFAULT_SIZE
    big = int(size * 1.5)
    n = rng.standard_normal((big, big)).astype(np.float32)
    grain = cv2.GaussianBlur(n, (0, 0), sigmaX=18 * s, sigmaY=0.7 * s)
    grain /= grain.std() + 1e-6
    rot = cv2.getRotationMatrix2D((big / 2, big / 2), rng.uniform(-3.0, 3.0), 1.0)
    grain = cv2.warpAffine(grain, rot, (big, big), flags=cv2.INTER_LINEAR)
    o = (big - size) // 2
    grain = grain[o : o + size, o : o + size]
    yy = np.arange(size, dtype=np.float32)[:, None]
    c, w = rng.uniform(0.2, 0.8) * size, rng.uniform(0.15, 0.35) * size
    band = rng.uniform(0.03, 0.14) * np.exp(-(((yy - c) / w) ** 2))
    fine = _smooth_noise(rng, size, 0.6)
    base = np.array([0.55, 0.56, 0.58], np.float32) * rng.uniform(0.96, 1.04)
    value = rng.uniform(0.045, 0.07) * grain + 0.015 * fine + band - 0.05
    return (base + value[..., None]).astype(np.float32)


def _metal_defect(
    img: np.ndarray, rng: np.random.Generator, defect: str
) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    s = size / DEFAULT_SIZE
    center = _place(rng, size, 56 * s)
    if defect == "scratch":
        angle = rng.choice([-1, 1]) * rng.uniform(np.deg2rad(20), np.deg2rad(70))
        length = rng.uniform(50, 120) * s
        start = center - 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
        pts = np.clip(_curve(rng, start, angle, length, 0.03), 2, size - 3)
        line = _polyline(size, pts, max(1, round(rng.uniform(1, 2.5) * s)))
        delta = rng.uniform(0.08, 0.3) * (1 if rng.random() < 0.5 else -1)  # faint to strong
        return _shade(img, line, add=delta), _dilate(line > 0.3, max(1, round(s)))
    if defect == "crack":
        pts = _jagged(rng, center, rng.uniform(0, 2 * np.pi), rng.uniform(35, 70) * s)
        lines = [pts]
        for _ in range(rng.integers(0, 3)):
            p = pts[rng.integers(1, len(pts))].astype(np.float64)
            lines.append(_jagged(rng, p, rng.uniform(0, 2 * np.pi), rng.uniform(10, 25) * s))
        alpha = np.zeros((size, size), np.float32)
        for line_pts in lines:
            line_pts = np.clip(line_pts, 2, size - 3)
            alpha = np.maximum(alpha, _polyline(size, line_pts, max(1, round(1.5 * s))))
        darkness = rng.uniform(0.5, 1.0)
        return _blend(img, alpha * darkness, (0.10, 0.10, 0.11)), _dilate(
            alpha > 0.3, max(1, round(s))
        )
    if defect == "stain":
        poly = _blob_polygon(rng, center, rng.uniform(10, 22) * s, roughness=0.3)
        hard = _alpha(size, lambda c: cv2.fillPoly(c, [poly], 255, cv2.LINE_8))
        soft = cv2.GaussianBlur(hard, (0, 0), 3 * s)
        colours = [(0.55, 0.30, 0.12), (0.22, 0.22, 0.26), (0.80, 0.78, 0.70)]
        colour = np.asarray(colours[rng.integers(len(colours))], np.float32)
        lum = _luminance(img)
        stained = colour * (lum / max(float(lum.mean()), 1e-3))[..., None]
        return _blend(img, soft * rng.uniform(0.25, 0.7), stained), soft > 0.5
    if defect == "hole":
        r = rng.uniform(4, 10) * s
        cx, cy = (int(round(v)) for v in center)
        rim_w = max(1, round(2 * s))
        rim = _alpha(
            size, lambda c: cv2.circle(c, (cx, cy), int(round(r)) + rim_w, 255, -1, cv2.LINE_AA)
        )
        core = _alpha(size, lambda c: cv2.circle(c, (cx, cy), int(round(r)), 255, -1, cv2.LINE_AA))
        img = _blend(img, rim, (0.82, 0.82, 0.84))
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        depth = np.clip(1.0 - np.hypot(xx - cx + r / 3, yy - cy + r / 3) / (1.6 * r), 0, 1)
        inside = (0.05 + 0.12 * depth)[..., None] * np.ones(3, np.float32)
        return _blend(img, core, inside), rim > 0.5
    raise AssertionError(defect)


def _render_metal(
    rng: np.random.Generator, size: int, defect: str | None
) -> tuple[np.ndarray, np.ndarray | None]:
    img = _metal(rng, size)
    return _metal_defect(img, rng, defect) if defect else (img, None)


# ----------------------------------------------------------------------------- parts (objects)


@dataclass
class _Part:
    """One item of an arrangement, in 256-pixel layout units (scaled when drawn)."""

    center: tuple[float, float]
    shape: str  # "circle" | "square" | "rect"
    dims: tuple[float, float]  # circle: (radius, radius); square/rect: (width, height)
    colour: Rgb
    angle: float = 0.0
    present: bool = True


def _part_alpha(part: _Part, size: int, s: float, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    cx, cy = (part.center[0] + dx) * s, (part.center[1] + dy) * s
    if part.shape == "circle":
        r = part.dims[0] * s
        return _alpha(
            size,
            lambda c: cv2.circle(
                c, (int(round(cx)), int(round(cy))), int(round(r)), 255, -1, cv2.LINE_AA
            ),
        )
    w, h = part.dims[0] * s, part.dims[1] * s
    box = cv2.boxPoints(((cx, cy), (w, h), part.angle))
    pts = np.round(box).astype(np.int32)
    return _alpha(size, lambda c: cv2.fillPoly(c, [pts], 255, cv2.LINE_AA))


def _draw_part(img: np.ndarray, part: _Part, s: float) -> np.ndarray:
    """Draw a part with a drop shadow and a highlight (in place; returns img)."""
    size = img.shape[0]
    shadow = cv2.GaussianBlur(_part_alpha(part, size, s, 2.5, 3.0), (0, 0), 2.0 * s)
    img = _shade(img, shadow, gain=0.65)
    body = _part_alpha(part, size, s)
    img = _blend(img, body, part.colour)
    half = (part.dims[0] * 0.5, part.dims[1] * 0.5)
    shrunk = _Part(part.center, part.shape, half, part.colour, part.angle)
    highlight = cv2.GaussianBlur(_part_alpha(shrunk, size, s, -3.0, -3.0), (0, 0), 3.0 * s)
    return _shade(img, highlight * body, add=0.10)


def _footprint(part: _Part, size: int, s: float) -> np.ndarray:
    return _part_alpha(part, size, s) > 0.5


def _surface(rng: np.random.Generator, size: int, colour: Rgb, amount: float) -> np.ndarray:
    s = size / DEFAULT_SIZE
    noise = amount * _smooth_noise(rng, size, 6 * s) + 0.5 * amount * _smooth_noise(rng, size, 1)
    return np.asarray(colour, np.float32) + noise[..., None].astype(np.float32)


def _scratch_on(
    img: np.ndarray, rng: np.random.Generator, region: tuple[float, float, float, float], s: float
) -> tuple[np.ndarray, np.ndarray]:
    """A bright or dark scratch inside the layout box region (x0, y0, x1, y1)."""
    size = img.shape[0]
    x0, y0, x1, y1 = (v * s for v in region)
    center = np.array(
        [rng.uniform(x0 + 30 * s, x1 - 30 * s), rng.uniform(y0 + 30 * s, y1 - 30 * s)]
    )
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(35, 70) * s
    start = center - 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
    pts = _curve(rng, start, angle, length, 0.04)
    line = _polyline(size, pts, max(1, round(2 * s)))
    delta = rng.uniform(0.25, 0.35) * (1 if rng.random() < 0.5 else -1)
    return _shade(img, line, add=delta), _dilate(line > 0.3, max(1, round(s)))


def _logical(
    parts: list[_Part],
    rng: np.random.Generator,
    defect: str,
    palette: list[Rgb],
    extra_spots: list[tuple[float, float]],
    extra_part: Callable[[tuple[float, float], Rgb], _Part],
    swappable: list[int],
    recolourable: list[int],
    size: int,
    s: float,
) -> tuple[list[_Part], np.ndarray]:
    """Apply a logical anomaly to the arrangement; return the parts and the anomaly mask."""
    mask = np.zeros((size, size), bool)
    if defect.startswith("missing"):
        i = int(rng.integers(len(parts)))
        parts[i].present = False
        mask |= _footprint(parts[i], size, s)
    elif defect.startswith("extra"):
        spot = extra_spots[int(rng.integers(len(extra_spots)))]
        spot = (spot[0] + rng.uniform(-3, 3), spot[1] + rng.uniform(-3, 3))
        extra = extra_part(spot, palette[int(rng.integers(len(palette)))])
        parts.append(extra)
        mask |= _footprint(extra, size, s)
    elif defect == "wrong_colour":
        i = recolourable[int(rng.integers(len(recolourable)))]
        parts[i].colour = palette[int(rng.integers(len(palette)))]
        mask |= _footprint(parts[i], size, s)
    elif defect == "swapped":
        while True:
            i, j = (swappable[k] for k in rng.choice(len(swappable), 2, replace=False))
            if parts[i].colour != parts[j].colour or parts[i].shape != parts[j].shape:
                break
        a, b = parts[i], parts[j]
        a.colour, b.colour = b.colour, a.colour
        a.shape, b.shape = b.shape, a.shape
        a.dims, b.dims = b.dims, a.dims
        mask |= _footprint(a, size, s) | _footprint(b, size, s)
    else:
        raise AssertionError(defect)
    return parts, mask


# ----------------------------------------------------------------------------- tray

_TRAY_COLOURS: dict[str, Rgb] = {
    "red": (0.80, 0.18, 0.15),
    "green": (0.20, 0.62, 0.25),
    "blue": (0.18, 0.35, 0.80),
    "yellow": (0.90, 0.78, 0.15),
}
_TRAY_WRONG: list[Rgb] = [(0.55, 0.25, 0.65), (0.95, 0.50, 0.10), (0.92, 0.92, 0.92)]
_TRAY_SLOTS = [  # (colour, shape) per slot, row-major 3 x 2
    ("red", "circle"),
    ("green", "square"),
    ("blue", "circle"),
    ("yellow", "square"),
    ("blue", "square"),
    ("red", "square"),
]
_TRAY_BOX = (20.0, 36.0, 236.0, 220.0)
_SLOT_W, _SLOT_H = 56.0, 68.0


def _slot_centers() -> list[tuple[float, float]]:
    x0, y0, x1, y1 = _TRAY_BOX
    gx = (x1 - x0 - 3 * _SLOT_W) / 4
    gy = (y1 - y0 - 2 * _SLOT_H) / 3
    return [
        (x0 + gx + col * (_SLOT_W + gx) + _SLOT_W / 2, y0 + gy + row * (_SLOT_H + gy) + _SLOT_H / 2)
        for row in range(2)
        for col in range(3)
    ]


def _tray_part(center: tuple[float, float], colour: Rgb, shape: str, angle: float) -> _Part:
    dims = (19.0, 19.0) if shape == "circle" else (34.0, 34.0)
    return _Part(center, shape, dims, colour, angle)


def _render_tray(
    rng: np.random.Generator, size: int, defect: str | None
) -> tuple[np.ndarray, np.ndarray | None]:
    s = size / DEFAULT_SIZE
    img = _surface(rng, size, (0.62, 0.60, 0.56), 0.015)
    x0, y0, x1, y1 = (v * s for v in _TRAY_BOX)
    tray = _alpha(
        size,
        lambda c: cv2.rectangle(c, (int(x0), int(y0)), (int(x1), int(y1)), 255, -1, cv2.LINE_AA),
    )
    shadow = cv2.GaussianBlur(np.roll(tray, (int(4 * s), int(3 * s)), (0, 1)), (0, 0), 3 * s)
    img = _shade(img, shadow, gain=0.7)
    img = _blend(img, tray, _surface(rng, size, (0.34, 0.37, 0.42), 0.01))
    centers = _slot_centers()
    for cx, cy in centers:
        p0 = (int((cx - _SLOT_W / 2) * s), int((cy - _SLOT_H / 2) * s))
        p1 = (int((cx + _SLOT_W / 2) * s), int((cy + _SLOT_H / 2) * s))
        img = _blend(img, _rect_alpha(size, p0, p1, -1), (0.24, 0.26, 0.30))
        edge = _rect_alpha(size, p0, p1, max(1, round(s)))
        img = _blend(img, edge * 0.7, (0.45, 0.48, 0.53))
    parts = []
    for (cx, cy), (name, shape) in zip(centers, _TRAY_SLOTS, strict=True):
        jitter = rng.uniform(-2.5, 2.5, 2)
        angle = rng.uniform(-8, 8) if shape == "square" else 0.0
        parts.append(
            _tray_part((cx + jitter[0], cy + jitter[1]), _TRAY_COLOURS[name], shape, angle)
        )

    mask = None
    if defect is not None and defect != "scratch":
        gap_y = (centers[0][1] + centers[3][1]) / 2
        spots = [
            ((centers[0][0] + centers[1][0]) / 2, gap_y),
            ((centers[1][0] + centers[2][0]) / 2, gap_y),
            (rng.uniform(70, 186), 19.0),
            (rng.uniform(70, 186), 236.0),
        ]
        wrong = list(_TRAY_WRONG)
        palette = list(_TRAY_COLOURS.values())
        parts, mask = _logical(
            parts,
            rng,
            defect,
            palette=wrong if defect == "wrong_colour" else palette,
            extra_spots=spots,
            extra_part=lambda c, col: _Part(c, "circle", (13.0, 13.0), col),
            swappable=list(range(len(parts))),
            recolourable=list(range(len(parts))),
            size=size,
            s=s,
        )
    for part in parts:
        if part.present:
            img = _draw_part(img, part, s)
    if defect == "scratch":  # over everything, so the mask is exactly what shows
        img, mask = _scratch_on(img, rng, _TRAY_BOX, s)
    return _warp(img, mask, rng, s)


# ----------------------------------------------------------------------------- board

_BOARD_BOX = (14.0, 14.0, 242.0, 242.0)
_PCB_GREEN: Rgb = (0.10, 0.38, 0.20)
_PAD: Rgb = (0.78, 0.76, 0.68)
_TRACE: Rgb = (0.16, 0.50, 0.26)
_CAPS: list[Rgb] = [(0.15, 0.30, 0.70), (0.85, 0.50, 0.12), (0.60, 0.60, 0.63)]
_LEDS: list[Rgb] = [(0.85, 0.12, 0.10), (0.15, 0.75, 0.20), (0.95, 0.85, 0.15)]
_WRONG_CAPS: list[Rgb] = [(0.55, 0.20, 0.60), (0.90, 0.90, 0.90)]
_WRONG_LEDS: list[Rgb] = [(0.20, 0.35, 0.95), (0.95, 0.95, 0.95)]


def _board_parts(rng: np.random.Generator) -> list[_Part]:
    """IC, three resistors, three capacitors, three LEDs (fixed layout, jittered)."""

    def j() -> tuple[float, float]:
        d = rng.uniform(-1.5, 1.5, 2)
        return float(d[0]), float(d[1])

    parts = []
    dx, dy = j()
    parts.append(_Part((88 + dx, 92 + dy), "rect", (64.0, 44.0), (0.08, 0.08, 0.09)))
    for y in (56.0, 88.0, 120.0):
        dx, dy = j()
        parts.append(_Part((182 + dx, y + dy), "rect", (26.0, 11.0), (0.80, 0.70, 0.52)))
    for x, col in zip((60.0, 104.0, 148.0), _CAPS, strict=True):
        dx, dy = j()
        parts.append(_Part((x + dx, 182 + dy), "circle", (12.0, 12.0), col))
    for y, col in zip((168.0, 192.0, 216.0), _LEDS, strict=True):
        dx, dy = j()
        parts.append(_Part((200 + dx, y + dy), "rect", (13.0, 9.0), col))
    return parts


def _draw_pads(img: np.ndarray, part: _Part, s: float) -> np.ndarray:
    """The solder pads under a component (visible when it is missing)."""
    size = img.shape[0]
    cx, cy = part.center
    w, h = part.dims
    if part.shape == "circle":
        pads = [
            _Part((cx - w * 0.5, cy), "rect", (6, 6), _PAD),
            _Part((cx + w * 0.5, cy), "rect", (6, 6), _PAD),
        ]
    elif w > 40:  # IC: six pins a side
        pads = [
            _Part(
                (cx - w / 2 + 7 + k * (w - 14) / 5, cy + side * (h / 2 + 3)), "rect", (5, 8), _PAD
            )
            for k in range(6)
            for side in (-1, 1)
        ]
    else:  # two-terminal part: pads at both ends
        pads = [_Part((cx + side * (w / 2 + 1), cy), "rect", (8, h + 3), _PAD) for side in (-1, 1)]
    for pad in pads:
        img = _blend(img, _part_alpha(pad, size, s), pad.colour)
    return img


def _draw_component(img: np.ndarray, part: _Part, s: float) -> np.ndarray:
    img = _draw_part(img, part, s)
    size = img.shape[0]
    cx, cy = part.center
    if part.shape == "rect" and part.dims == (26.0, 11.0):  # resistor colour bands
        for k, col in enumerate([(0.45, 0.25, 0.10), (0.10, 0.10, 0.10), (0.85, 0.15, 0.10)]):
            band = _Part((cx - 7 + 5 * k, cy), "rect", (2.5, 11.0), col)
            img = _blend(img, _part_alpha(band, size, s), col)
    elif part.shape == "rect" and part.dims[0] > 40:  # IC pin-1 dot
        dot = _Part((cx - 24, cy - 13), "circle", (3.0, 3.0), (0.3, 0.3, 0.3))
        img = _blend(img, _part_alpha(dot, size, s), dot.colour)
    return img


def _render_board(
    rng: np.random.Generator, size: int, defect: str | None
) -> tuple[np.ndarray, np.ndarray | None]:
    s = size / DEFAULT_SIZE
    img = _surface(rng, size, (0.30, 0.30, 0.32), 0.015)
    x0, y0, x1, y1 = (v * s for v in _BOARD_BOX)
    board = _alpha(
        size, lambda c: cv2.rectangle(c, (int(x0), int(y0)), (int(x1), int(y1)), 255, -1)
    )
    img = _blend(img, board, _surface(rng, size, _PCB_GREEN, 0.012))
    parts = _board_parts(rng)
    traces = [
        [(120, 70), (150, 70), (160, 56), (169, 56)],
        [(120, 92), (169, 88)],
        [(120, 114), (150, 114), (160, 120), (169, 120)],
        [(60, 170), (60, 140), (70, 118)],
        [(104, 170), (104, 118)],
        [(148, 170), (148, 150), (200, 150), (200, 163)],
        [(195, 56), (222, 56), (222, 216), (206, 216)],
        [(160, 182), (190, 192)],
    ]
    for tr in traces:
        pts = np.round(np.asarray(tr, np.float64) * s).astype(np.int32)
        img = _blend(img, _polyline(size, pts, max(1, round(3 * s))), _TRACE)
    for hx, hy in ((26, 26), (230, 26), (26, 230), (230, 230)):
        ring = _Part((hx, hy), "circle", (7.0, 7.0), _PAD)
        hole = _Part((hx, hy), "circle", (4.0, 4.0), (0.05, 0.05, 0.05))
        img = _blend(img, _part_alpha(ring, size, s), ring.colour)
        img = _blend(img, _part_alpha(hole, size, s), hole.colour)
    for part in parts:
        img = _draw_pads(img, part, s)

    mask = None
    if defect is not None and defect != "scratch":
        caps, leds = [4, 5, 6], [7, 8, 9]
        group = caps if rng.random() < 0.5 else leds
        wrong = _WRONG_CAPS if group is caps else _WRONG_LEDS
        parts, mask = _logical(
            parts,
            rng,
            defect,
            palette=wrong,
            extra_spots=[(40.0, 140.0), (150.0, 226.0), (130.0, 30.0), (75.0, 226.0)],
            extra_part=lambda c, _col: _Part(c, "rect", (26.0, 11.0), (0.80, 0.70, 0.52)),
            swappable=group,
            recolourable=group,
            size=size,
            s=s,
        )
    for part in parts:
        if part.present:
            img = _draw_component(img, part, s)
    if defect == "scratch":  # over everything, so the mask is exactly what shows
        img, mask = _scratch_on(img, rng, _BOARD_BOX, s)
    return _warp(img, mask, rng, s)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class CategorySpec:
    """A synthetic category: its kind ("texture" | "object"), defect types and renderer."""

    name: str
    kind: str
    defects: tuple[str, ...]
    render: RenderFn


_SPECS: dict[str, CategorySpec] = {
    spec.name: spec
    for spec in (
        CategorySpec("fabric", "texture", ("hole", "stain", "thread", "cut"), _render_fabric),
        CategorySpec("metal", "texture", ("scratch", "crack", "stain", "hole"), _render_metal),
        CategorySpec(
            "tray",
            "object",
            ("missing_part", "extra_part", "wrong_colour", "swapped", "scratch"),
            _render_tray,
        ),
        CategorySpec(
            "board",
            "object",
            ("missing_component", "extra_component", "wrong_colour", "swapped", "scratch"),
            _render_board,
        ),
    )
}
CATEGORIES: tuple[str, ...] = tuple(_SPECS)
DEFECTS: dict[str, tuple[str, ...]] = {name: spec.defects for name, spec in _SPECS.items()}
LOGICAL_DEFECTS = frozenset(
    {
        "missing_part",
        "extra_part",
        "wrong_colour",
        "swapped",
        "missing_component",
        "extra_component",
    }
)


def category_spec(name: str) -> CategorySpec:
    """The spec of a category; UserInputError listing the valid names otherwise."""
    if name not in _SPECS:
        msg = f"unknown synthetic category {name!r}; choose from {', '.join(CATEGORIES)}"
        raise UserInputError(msg)
    return _SPECS[name]


def image_rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    """The Generator of one image, seeded by (seed, category, split, index) only."""
    key = [int(seed), zlib.crc32(category.encode()), _SPLIT_CODES[split], int(index)]
    return np.random.default_rng(np.random.SeedSequence(key))


def render_image(
    category: str,
    defect: str | None,
    seed: int = 0,
    split: str = "test",
    index: int = 0,
    size: int = DEFAULT_SIZE,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Render one image.

    Args:
        category: one of CATEGORIES.
        defect: a defect type of the category, or None for a normal image.
        seed, split, index: pick the image's random stream ("train" | "test").
        size: side in pixels (square images).

    Returns:
        (image HxWx3 uint8 RGB, mask HxW uint8 0/255 or None when normal).
    """
    spec = category_spec(category)
    if defect is not None and defect not in spec.defects:
        msg = f"{category} has no defect {defect!r}; choose from {', '.join(spec.defects)}"
        raise UserInputError(msg)
    rng = image_rng(seed, category, split, index)
    img, mask = spec.render(rng, size, defect)
    out = _capture(img, rng)
    if mask is None:
        return out, None
    if not mask.any():  # pragma: no cover - a renderer bug, not a user error
        msg = f"empty mask for {category}/{defect} (seed {seed}, {split} {index})"
        raise RuntimeError(msg)
    return out, mask.astype(np.uint8) * 255


def defect_plan(category: str, n_test: int) -> list[str | None]:
    """Defect type of each test index: the first half (rounded down) good, then round-robin."""
    spec = category_spec(category)
    n_good = n_test // 2
    return [None] * n_good + [spec.defects[i % len(spec.defects)] for i in range(n_test - n_good)]


def _write_png(path: Path, array: np.ndarray) -> None:
    """PNG with fixed settings and no metadata (byte-identical for identical pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)


def _prepare(cat_dir: Path, remove: bool) -> None:
    """Refuse a folder synth did not write; remove an earlier synthetic tree when `remove`."""
    if not cat_dir.exists():
        return
    if not cat_dir.is_dir():
        msg = f"{cat_dir} exists and is not a folder; choose another output folder"
        raise UserInputError(msg)
    if (cat_dir / MARKER).is_file():
        if remove:
            shutil.rmtree(cat_dir)
    elif any(cat_dir.iterdir()):
        msg = (
            f"{cat_dir} exists and was not written by `anomaly-agent synth` (no {MARKER}); "
            "choose another output folder or remove it"
        )
        raise UserInputError(msg)


def generate_dataset(
    out_dir: str | Path,
    seed: int = 0,
    categories: list[str] | tuple[str, ...] | None = None,
    n_train: int = DEFAULT_N_TRAIN,
    n_test: int = DEFAULT_N_TEST,
    size: int = DEFAULT_SIZE,
) -> dict[str, Any]:
    """Write an MVTec-style synthetic dataset.

    Args:
        out_dir: root folder; each category becomes `out_dir/<category>` (replaced when an earlier
            synth run wrote it).
        seed: non-negative integer; the same arguments give byte-identical files.
        categories: names from CATEGORIES (None: all).
        n_train: normal training images per category (>= 1).
        n_test: test images per category (>= 2): half good (rounded down), the rest split
            round-robin over the category's defect types.
        size: image side in pixels, 64..1024.

    Returns:
        {"out_dir", "seed", "size", "n_images", "n_masks", "seconds",
         "categories": {name: {"kind", "train": {"good": n}, "test": {type: n}, "masks": n}}}.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        msg = f"seed must be a non-negative integer, got {seed!r}"
        raise UserInputError(msg)
    if n_train < 1:
        msg = f"n_train must be at least 1 (normal references), got {n_train}"
        raise UserInputError(msg)
    if n_test < 2:
        msg = f"n_test must be at least 2 (one good and one anomalous image), got {n_test}"
        raise UserInputError(msg)
    if not 64 <= size <= 1024:
        msg = f"size must be between 64 and 1024 pixels, got {size}"
        raise UserInputError(msg)
    names = list(CATEGORIES if not categories else dict.fromkeys(categories))
    specs = [category_spec(n) for n in names]
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        msg = f"{root} exists and is not a folder; choose another output folder"
        raise UserInputError(msg)

    t0 = time.perf_counter()
    summary: dict[str, Any] = {"out_dir": str(root), "seed": int(seed), "size": size}
    cats: dict[str, Any] = {}
    n_images = n_masks = 0
    for spec in specs:  # check every target before changing anything
        _prepare(root / spec.name, remove=False)
    for spec in specs:
        cat_dir = root / spec.name
        _prepare(cat_dir, remove=True)
        cat_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n_train):
            img, _ = render_image(spec.name, None, seed, "train", i, size)
            _write_png(cat_dir / "train" / "good" / f"{i:03d}.png", img)
        counts: dict[str, int] = {}
        masks = 0
        for i, defect in enumerate(defect_plan(spec.name, n_test)):
            kind = defect or "good"
            k = counts.get(kind, 0)
            counts[kind] = k + 1
            img, mask = render_image(spec.name, defect, seed, "test", i, size)
            _write_png(cat_dir / "test" / kind / f"{k:03d}.png", img)
            if mask is not None:
                _write_png(cat_dir / "ground_truth" / kind / f"{k:03d}_mask.png", mask)
                masks += 1
        marker = {
            "generator": "anomaly-agent synth",
            "category": spec.name,
            "kind": spec.kind,
            "defects": list(spec.defects),
            "seed": int(seed),
            "size": size,
            "n_train": n_train,
            "n_test": n_test,
        }
        (cat_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        cats[spec.name] = {
            "kind": spec.kind,
            "train": {"good": n_train},
            "test": counts,
            "masks": masks,
        }
        n_images += n_train + n_test
        n_masks += masks
    summary.update(
        categories=cats,
        n_images=n_images,
        n_masks=n_masks,
        seconds=round(time.perf_counter() - t0, 3),
    )
    return summary
