"""Calibrate a tool's raw score on the normal references.

The references' own scores (leave-one-out for k >= 2, augmented copies for k = 1) describe what
"normal" looks like in the tool's units. A raw score maps to [0, 1] by

    z = (raw - median(normal)) / spread,     score = sigmoid(z - Z_EDGE)

where `spread` is the normals' standard deviation, floored at `MIN_REL_SPREAD` of the median's size
(so two identical references do not make every query infinitely anomalous). With Z_EDGE = 3 a raw
score three spreads above the normals' median maps to 0.5: "at the edge of what the references show".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z_EDGE = 3.0
MIN_REL_SPREAD = 0.05
MIN_ABS_SPREAD = 1e-6


@dataclass(frozen=True)
class Calibrator:
    """Maps raw scores (higher = more anomalous) to [0, 1] using normal reference scores.

    Attributes:
        center: median of the normal scores (raw units).
        spread: their spread (raw units, floored).
        n: how many normal scores it was fitted on.
    """

    center: float
    spread: float
    n: int

    @classmethod
    def fit(cls, normal_scores, min_rel_spread: float = MIN_REL_SPREAD,
            max_rel_spread: float | None = None) -> Calibrator:
        """Fit on normal scores; the spread is kept within [min, max] x |median| (max: no cap)."""
        scores = np.asarray(list(normal_scores), dtype=np.float64)
        if scores.size == 0:
            msg = "cannot calibrate on zero normal scores"
            raise ValueError(msg)
        center = float(np.median(scores))
        spread = float(scores.std(ddof=1)) if scores.size > 1 else 0.0
        if max_rel_spread is not None:
            spread = min(spread, max_rel_spread * abs(center))
        spread = max(spread, min_rel_spread * abs(center), MIN_ABS_SPREAD)
        return cls(center=center, spread=spread, n=int(scores.size))

    @property
    def edge(self) -> float:
        """The raw score whose calibrated score is 0.5 ("edge of normal")."""
        return self.center + Z_EDGE * self.spread

    def z(self, raw: float) -> float:
        """Raw score in spreads above the normals' median."""
        return (float(raw) - self.center) / self.spread

    def log_odds(self, raw: float) -> float:
        """The calibrated score's log-odds, unbounded (the score itself rounds to 1.0 beyond ~37)."""
        return self.z(raw) - Z_EDGE

    def __call__(self, raw: float) -> float:
        """Calibrated score in [0, 1]."""
        x = self.z(raw) - Z_EDGE
        if x >= 0:
            return 1.0 / (1.0 + math.exp(-x))
        e = math.exp(x)
        return e / (1.0 + e)


def ratio_to_normal(raw: float, center: float) -> float | None:
    """raw / the normals' median (how many times the references' own variation), None when that median is ~0."""
    return float(raw) / float(center) if abs(float(center)) > 1e-9 else None


def augmented_copies(pixels: np.ndarray, n: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Mildly perturbed copies of a normal image, to calibrate a tool when k = 1.

    Each copy is shifted by up to 3% of the side (reflect border), given a +-8% gain and a +-6
    grey-level offset, and Gaussian noise of sigma 2 grey levels: changes a normal image can show,
    no defect. pixels: HxWx3 uint8. Returns n arrays of the same shape and dtype.
    """
    import cv2

    rng = np.random.default_rng(seed)
    h, w = pixels.shape[:2]
    out = []
    for _ in range(n):
        dx, dy = rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.03, 0.03) * h
        m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], dtype=np.float64)
        moved = cv2.warpAffine(pixels, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        gain, offset = rng.uniform(0.92, 1.08), rng.uniform(-6.0, 6.0)
        noisy = moved.astype(np.float32) * gain + offset + rng.normal(0.0, 2.0, moved.shape)
        out.append(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    return out
