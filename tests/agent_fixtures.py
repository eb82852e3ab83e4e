"""Small synthetic images for agent tests: a noisy texture, and the same texture with a dark blob."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SIZE = 128
DEFECT_BOX = (80, 30, 104, 54)  # xyxy, pixels


def texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.full((SIZE, SIZE), 150.0)
    xx = np.arange(SIZE)
    base += 12 * np.sin(xx / 3.0)[None, :]  # vertical stripes
    base += rng.normal(0, 6, (SIZE, SIZE))
    return np.repeat(np.clip(base, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def defect_set(root: Path, n_refs: int, defect_seeds) -> tuple[Path, dict[Path, float]]:
    """Write `n_refs` normal textures to ``root/refs`` and one defect image per seed; (the refs folder,
    defect path -> its tools-only verdict score)."""
    from agent.api import AnomalyAgent

    refs = root / "refs"
    refs.mkdir()
    for i in range(n_refs):
        Image.fromarray(texture(i)).save(refs / f"ref{i}.png")
    paths = []
    for i, seed in enumerate(defect_seeds):
        path = root / f"defect{i}.png"
        Image.fromarray(with_defect(texture(seed))).save(path)
        paths.append(path)
    tools_only = AnomalyAgent.from_config(backend="none", memory_path=root / "no-memory", threads=2)
    return refs, {p: tools_only.detect(p, category="texture", references=refs).pred_score for p in paths}


def with_defect(pixels: np.ndarray) -> np.ndarray:
    out = pixels.copy()
    x0, y0, x1, y1 = DEFECT_BOX
    cv2.ellipse(out, ((x0 + x1) // 2, (y0 + y1) // 2), ((x1 - x0) // 2, (y1 - y0) // 2), 0, 0, 360, (20, 20, 20), -1)
    return out


def write_set(root: Path, n_refs: int = 3) -> dict:
    """Writes refs/ref{i}.png, good.png, bad.png; returns their paths."""
    refs = root / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    for i in range(n_refs):
        Image.fromarray(texture(i)).save(refs / f"ref{i}.png")
    Image.fromarray(texture(100)).save(root / "good.png")
    Image.fromarray(with_defect(texture(101))).save(root / "bad.png")
    return {"refs": refs, "good": root / "good.png", "bad": root / "bad.png"}


def verdict_json(label: str, explanation: str = "patch_knn scored high in the top right.", regions=None,
                 defect_type: str | None = "blob") -> str:
    import json

    return json.dumps({"label": label, "defect_type": defect_type if label == "anomalous" else None,
                       "regions": regions or [], "explanation": explanation})


def label_logprobs(p_anomalous: float) -> list[dict]:
    """OpenAI-shaped logprobs for a verdict JSON whose label token has P(anomalous) = p."""
    import math

    p_normal = 1.0 - p_anomalous
    head = [{"token": t, "logprob": 0.0, "top_logprobs": [{"token": t, "logprob": 0.0}]} for t in ['{"', "label", '":', ' "']]
    label_tok = "anom" if p_anomalous >= 0.5 else "normal"
    top = [{"token": "anom", "logprob": math.log(max(p_anomalous, 1e-9))},
           {"token": "normal", "logprob": math.log(max(p_normal, 1e-9))}]
    return [*head, {"token": label_tok, "logprob": max(top, key=lambda t: t["logprob"])["logprob"], "top_logprobs": top}]
