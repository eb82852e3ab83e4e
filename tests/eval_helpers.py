"""Tiny dataset trees and a real (non-mock) brightness detector for the evals tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from PIL import Image

from agent.schemas import Evidence, Region, Usage, Verdict

SIZE = 32
BOX = (8, 8, 20, 20)  # xyxy of the bright defect square


def write_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def normal_image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(30, 60, (SIZE, SIZE), dtype=np.uint8)


def anomalous_image(seed: int, value: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """An image with a bright square and its 0/255 mask."""
    img = normal_image(seed)
    x0, y0, x1, y1 = BOX
    img[y0:y1, x0:x1] = value
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[y0:y1, x0:x1] = 255
    return img, mask


def make_folder_tree(
    root: Path,
    categories=("alpha", "beta"),
    n_train: int = 4,
    n_good: int = 3,
    defects=("scratch", "dent"),
    n_bad: int = 2,
    mask_suffix: str = "_mask",
    ext: str = ".png",
) -> Path:
    """An MVTec-AD-style tree: <root>/<cat>/{train/good, test/<type>, ground_truth/<type>}."""
    seed = 0
    for cat in categories:
        for i in range(n_train):
            write_png(root / cat / "train" / "good" / f"{i:03d}{ext}", normal_image(seed := seed + 1))
        for i in range(n_good):
            write_png(root / cat / "test" / "good" / f"{i:03d}{ext}", normal_image(seed := seed + 1))
        for d in defects:
            for i in range(n_bad):
                img, mask = anomalous_image(seed := seed + 1, value=150 + 40 * (i % 3))
                write_png(root / cat / "test" / d / f"{i:03d}{ext}", img)
                write_png(root / cat / "ground_truth" / d / f"{i:03d}{mask_suffix}.png", mask)
    return root


class BrightnessDetector:
    """Scores an image by its mean brightness; writes the grey image as its anomaly map.

    A real detector for tests: deterministic, cheap, and good at the bright-square anomalies above.
    Images whose name contains ``fail`` raise; ``delay_s`` sleeps per call (for concurrency tests).
    """

    def __init__(self, map_dir: Path | None = None, delay_s: float = 0.0, threshold: float = 0.25):
        self.map_dir = map_dir
        self.delay_s = delay_s
        self.threshold = threshold
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def adetect(self, image: str, *, category: str | None = None, references: list[str] | None = None) -> Verdict:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if "fail" in Path(image).name:
                msg = f"cannot judge {image}"
                raise RuntimeError(msg)
            grey = np.asarray(Image.open(image).convert("L"), dtype=np.float32)
            score = float(grey.mean() / 255.0)
            map_path = None
            if self.map_dir is not None:
                map_path = str(self.map_dir / f"{category}_{Path(image).parent.name}_{Path(image).stem}.png")
                write_png(Path(map_path), grey.astype(np.uint8))
            ys, xs = np.nonzero(grey > 120)
            regions = []
            if len(xs):
                regions = [Region(bbox_xyxy=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), score=score, label="bright")]
            return Verdict(
                image=image,
                category=category,
                pred_label="anomalous" if score >= self.threshold else "normal",
                pred_score=score,
                threshold=self.threshold,
                regions=regions,
                explanation=f"brightness: mean {score:.3f} with {len(references or [])} references",
                evidence=[Evidence(tool="brightness", score=score, summary=f"mean {score:.3f}", map_path=map_path, regions=regions)],
                usage=Usage(tool_calls=1),
            )
        finally:
            self.in_flight -= 1
