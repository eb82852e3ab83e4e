"""Keep at most `cap` normal references: the most diverse ones.

Above the cap (`max_references`), each reference becomes a 32x32 RGB thumbnail (area-averaged,
0..1); farthest-point selection then starts from the reference closest to the mean thumbnail (the
most typical one) and repeatedly adds the reference farthest (L2) from every one kept so far, until
`cap` are kept. The set so covers the references' variety (poses, lighting, textures) instead of
many near copies, and the bank and its search stay bounded (one bank row per reference patch).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

THUMB = 32
HOW = "farthest-point selection on 32x32 thumbnails, starting from the most typical"


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> a (THUMB*THUMB*3,) float32 vector in 0..1."""
    small = cv2.resize(pixels, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32).ravel() / 255.0


def farthest_point(vectors: np.ndarray, cap: int) -> list[int]:
    """Indices (sorted) of `cap` rows of an (n, d) array chosen by farthest-point selection."""
    n = len(vectors)
    if n <= cap:
        return list(range(n))
    first = int(np.argmin(np.linalg.norm(vectors - vectors.mean(axis=0), axis=1)))
    chosen = [first]
    nearest = np.linalg.norm(vectors - vectors[first], axis=1)
    while len(chosen) < cap:
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(vectors - vectors[nxt], axis=1))
    return sorted(chosen)


def select_references(paths: list, cap: int, load) -> tuple[list, str | None]:
    """The references to use, and a note when some were left out (None when within the cap).

    Args:
        paths: reference files (or images as objects), in order.
        cap: at most this many are kept.
        load: path -> HxWx3 uint8 pixels (the caller's validated intake; its errors propagate).
    """
    if len(paths) <= cap:
        return list(paths), None
    thumbs = np.stack([thumbnail(load(p)) for p in paths])
    keep = farthest_point(thumbs, cap)
    left = len(paths) - cap
    shown = ", ".join(Path(paths[i]).name if isinstance(paths[i], str | Path) else f"#{i}"
                      for i in sorted(set(range(len(paths))) - set(keep))[:3])
    note = (f"note: {len(paths)} references given, above the cap of {cap} (max_references, --max-references): "
            f"kept the {cap} most diverse ({HOW}); left out {left} ({shown}{', ...' if left > 3 else ''}). "
            "Fix: raise --max-references to use more (slower, more memory), or pass fewer")
    return [paths[i] for i in keep], note
