"""Speed of the synthetic generator and of the metrics (medians of repeats).

Tables:
- synth: ms per image for each category (render only, and render + PNG write), and the whole
  default generation (4 categories x (8 train + 12 test), 256 px).
- metrics: `image_metrics` beside scikit-learn's roc_auc_score + average_precision_score;
  `pixel_metrics` (pixel AUROC + AUPRO) beside scikit-learn's pixel AUROC alone on the concatenated
  pixels, with the peak memory that tracemalloc sees (numpy allocations included).

Run: ``python -m evals.bench.synth_metrics [--repeats 5] [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _median(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median seconds of `repeats` calls, peak MiB of one more call under tracemalloc)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return statistics.median(times), peak


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def bench_synth(repeats: int) -> None:
    from evals.synthetic import CATEGORIES, DEFECTS, _write_png, generate_dataset, render_image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cat in CATEGORIES:
            defect = DEFECTS[cat][0]
            t_render, _ = _median(lambda c=cat, d=defect: render_image(c, d, 0, "test", 7), repeats)
            img, mask = render_image(cat, defect, 0, "test", 7)

            def write(c=cat, img=img, mask=mask) -> None:
                _write_png(Path(tmp) / c / "x.png", img)
                _write_png(Path(tmp) / c / "x_mask.png", mask)

            t_write, _ = _median(write, repeats)
            rows.append([cat, f"{t_render * 1e3:.1f}", f"{(t_render + t_write) * 1e3:.1f}"])
        t_all, _ = _median(
            lambda: generate_dataset(Path(tmp) / "all", seed=0), max(1, repeats // 2)
        )
    rows.append(["default set (80 images, 24 masks)", "", f"{t_all * 1e3:.0f} total"])
    _table("synth, 256x256 (ms per anomalous image)", ["category", "render", "render+write"], rows)


def bench_metrics(repeats: int, quick: bool) -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    from evals.metrics import image_metrics, pixel_metrics

    rng = np.random.default_rng(0)
    rows = []
    for n in (1_000, 100_000) if quick else (1_000, 100_000, 1_000_000):
        y = rng.integers(0, 2, n)
        s = rng.normal(size=n) + y
        ours, _ = _median(lambda y=y, s=s: image_metrics(y, s), repeats)
        ref, _ = _median(
            lambda y=y, s=s: (roc_auc_score(y, s), average_precision_score(y, s)), repeats
        )
        rows.append([f"image, N={n:,}", f"{ours * 1e3:.1f}", "-", f"{ref * 1e3:.1f}", "-"])
    cases = [(100, 256)] if quick else [(100, 256), (40, 1024)]
    for n_img, side in cases:
        masks, maps = [], []
        for i in range(n_img):
            m = np.zeros((side, side), bool)
            if i % 2:
                y0, x0 = rng.integers(0, side // 2, 2)
                m[y0 : y0 + side // 8, x0 : x0 + side // 6] = True
            masks.append(m)
            maps.append((rng.random((side, side), np.float32) + 0.5 * m).astype(np.float32))
        ours, ours_mem = _median(lambda masks=masks, maps=maps: pixel_metrics(masks, maps), repeats)

        def sk(masks=masks, maps=maps) -> float:
            yy = np.concatenate([m.ravel() for m in masks])
            ss = np.concatenate([a.ravel() for a in maps])
            return roc_auc_score(yy, ss)

        ref, ref_mem = _median(sk, max(1, repeats // 2))
        px = n_img * side * side
        rows.append(
            [
                f"pixel, {n_img} x {side}^2 ({px / 1e6:.1f} Mpx)",
                f"{ours * 1e3:.0f}",
                f"{ours_mem:.0f}",
                f"{ref * 1e3:.0f}",
                f"{ref_mem:.0f}",
            ]
        )
    _table(
        "metrics (ours: image = AUROC+AUPR+F1-max; pixel = AUROC+AUPRO; sklearn: AUROC(+AP) only)",
        ["case", "ours ms", "ours peak MiB", "sklearn ms", "sklearn peak MiB"],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller metric cases")
    args = parser.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    bench_synth(args.repeats)
    bench_metrics(args.repeats, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
