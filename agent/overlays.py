"""Overlay a verdict on its image: the strongest tool's anomaly map as heat, the verdict's boxes in red."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from agent.schemas import Verdict
from tools.images import load_image
from tools.maps import write_overlay


def verdict_map(verdict: Verdict) -> np.ndarray | None:
    """The anomaly map (HxW float32 in [0, 1]) of the highest-scoring evidence that has one, or None. The
    survey's reading stands for its parts (`agent.fusion.without_survey_parts`): its map is the one its own rule
    picked."""
    from agent.fusion import without_survey_parts

    with_maps = [e for e in without_survey_parts(verdict.evidence) if e.map_path and Path(e.map_path).exists()]
    if not with_maps:
        return None
    best = max(with_maps, key=lambda e: e.score if e.score is not None else -1.0)
    grey = cv2.imread(best.map_path, cv2.IMREAD_GRAYSCALE)
    return None if grey is None else grey.astype(np.float32) / 255.0


def write_verdict_overlay(verdict: Verdict, image: str | Path, path: str | Path, max_pixels: int | None = None) -> str:
    """Write the overlay PNG for `verdict` of `image`; returns the path."""
    pixels = load_image(image) if max_pixels is None else load_image(image, max_pixels)
    amap = verdict_map(verdict)
    if amap is None:
        amap = np.zeros(pixels.shape[:2], dtype=np.float32)
    return write_overlay(pixels, amap, path, regions=verdict.regions, alpha=0.45 if amap.any() else 0.0)
