"""One very large image, tools only: does a user-allowed 144-megapixel image finish in bounded time?

A synthetic textured image of S x S pixels (grey blocks plus noise; the query has a bright square) is judged
against 3 references of the same size with `--backend none` and `max_image_pixels` raised to allow it. Rows:
``cold`` (the first detect: decodes, builds and stores the reference bank) and ``warm`` (the same query
again in the same process: decodes the query, reuses the bank), with the verdict's own stage timings.
patch_knn works at its working resolution (about 224^2 pixels); only decoding and the one map at the
image's size scale with the pixels.

Run: ``python -m evals.bench.big_image [--side 12000]`` (144 MP; about 1.7 GB of PNGs written to a temp dir).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_images(root: Path, side: int, n_refs: int = 3) -> tuple[Path, list[Path]]:
    """Write `n_refs` normal side x side RGB PNGs and one query with a bright square; (query, refs)."""
    rng = np.random.default_rng(0)
    block = 8
    base = rng.integers(100, 140, (side // block, side // block, 3)).astype(np.uint8)
    refs = []
    for i in range(n_refs + 1):
        img = np.kron(base, np.ones((block, block, 1), np.uint8)) + rng.integers(0, 6, (side, side, 3)).astype(np.uint8)
        if i == n_refs:
            a, b = int(side * 0.42), int(side * 0.47)
            img[a:b, a:b] = 255
            query = root / "query.png"
            Image.fromarray(img).save(query, compress_level=1)
        else:
            refs.append(root / f"ref{i}.png")
            Image.fromarray(img).save(refs[-1], compress_level=1)
    return query, refs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.bench.big_image", description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=12000, help="image side in pixels (12000: 144 MP)")
    args = parser.parse_args(argv)
    from agent.api import AnomalyAgent

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        query, refs = write_images(root, args.side)
        print(f"wrote 1 query and {len(refs)} references of {args.side}x{args.side} "
              f"({args.side ** 2 / 1e6:.0f} MP) in {time.perf_counter() - t0:.0f} s")
        agent = AnomalyAgent.from_config(backend="none", max_image_pixels=args.side ** 2 + 1,
                                         memory_path=str(root / "memory"), bank_dir=str(root / "banks"))
        print(f"\n{'run':<6} {'seconds':>8} {'verdict':>10} {'score':>7}  box (x0, y0, x1, y1)  stage timings (ms)")
        for run in ("cold", "warm"):
            t0 = time.perf_counter()
            verdict = agent.detect(str(query), category="big", references=[str(p) for p in refs])
            seconds = time.perf_counter() - t0
            box = tuple(verdict.regions[0].bbox_xyxy) if verdict.regions else "-"
            stages = ", ".join(f"{k.removesuffix('_ms')} {v:.0f}" for k, v in verdict.timings.items())
            score = f"{verdict.pred_score:.3f}" if verdict.pred_score is not None else verdict.error
            print(f"{run:<6} {seconds:>8.1f} {verdict.pred_label or 'error':>10} {score:>7}  {box}  {stages}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
