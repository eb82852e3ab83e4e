"""`clip_similarity`: WinCLIP-style zero-shot scoring, plus few-shot window memory (WinCLIP+).

Zero-shot: every window (multi-scale sliding crops, squashed to CLIP's input) and the whole image are
compared with the mean text embeddings of a "normal" and an "anomalous" prompt ensemble
(`prompts/clip_prompts.yaml`: state words x templates, with the category injected);
P(anomalous) = softmax(logit_scale * [cos_normal, cos_anomalous])[1].
Few-shot: each query window's distance to its most similar reference window of the same scale,
0.5 * (1 - cos). A pixel's value is the mean over the windows that cover it, averaged over scales.
Raw score: with references the few-shot distance (image distance + max window distance), calibrated
on the references (leave-one-out for k >= 2, augmented copies for k = 1); the zero-shot score
0.5 * (P_image + max P_window) is reported beside it with its own z against the references (kept out
of the raw score: CLIP probabilities carry a large class-dependent offset). Without references the
score is the uncalibrated zero-shot score.
The returned map is the few-shot map when references exist, else the zero-shot map (both written).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
from pydantic import Field

from tools.base import Tool, ToolContext, ToolError, ToolInput, ToolOutput, ToolSettings
from tools.calibration import Calibrator, augmented_copies
from tools.clip_models import ClipBundle, load_clip
from tools.maps import publish_map, resize_map
from tools.registry import register

GRID = 96  # side of the normalised accumulation grid for window maps
_BUNDLES: dict[tuple, ClipBundle] = {}
_LOCK = threading.Lock()


@cache
def load_prompt_lists() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(normal states, anomalous states, templates) from `prompts/clip_prompts.yaml`."""
    import yaml

    data = yaml.safe_load(resources.files("prompts").joinpath("clip_prompts.yaml").read_text())
    return tuple(data["states"]["normal"]), tuple(data["states"]["anomalous"]), tuple(data["templates"])


def build_prompts(category: str | None) -> tuple[list[str], list[str]]:
    """The normal and anomalous prompt ensembles for a category ("object" when None)."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    name = (category or "object").replace("_", " ").strip() or "object"
    normal, anomalous, templates = load_prompt_lists()

    def expand(states: tuple[str, ...]) -> list[str]:
        out = []
        for state in states:
            s = env.from_string(state).render(category=name)
            out.extend(env.from_string(t).render(state=s) for t in templates)
        return out

    return expand(normal), expand(anomalous)


def window_boxes(frac: float, stride: float = 0.5) -> np.ndarray:
    """Sliding windows of side `frac` (fraction of the image side), step `stride * frac`.

    Returns:
        Nx4 float32 xyxy boxes in normalised [0, 1] image coordinates, covering the image.
    """
    if frac >= 1.0:
        return np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
    n = math.ceil((1.0 - frac) / (frac * stride) - 1e-9) + 1
    starts = np.linspace(0.0, 1.0 - frac, n)
    return np.array([[x, y, x + frac, y + frac] for y in starts for x in starts], np.float32)


@dataclass
class WindowFeatures:
    """CLIP features of one image: `full` (D,), and per scale the boxes (Nx4, normalised) and NxD."""

    full: np.ndarray
    boxes: list[np.ndarray]
    feats: list[np.ndarray]


def embed_windows(bundle: ClipBundle, pixels: np.ndarray, fracs: tuple[float, ...]) -> WindowFeatures:
    """Embed the whole image and its sliding windows at each scale (one batched pass)."""
    h, w = pixels.shape[:2]
    crops = [pixels]
    boxes = [window_boxes(f) for f in fracs]
    for b in boxes:
        for x0, y0, x1, y1 in b:
            px0, py0 = int(round(x0 * w)), int(round(y0 * h))
            px1, py1 = max(px0 + 1, int(round(x1 * w))), max(py0 + 1, int(round(y1 * h)))
            crops.append(pixels[py0:py1, px0:px1])
    feats = bundle.encode_images(crops)
    out, i = [], 1
    for b in boxes:
        out.append(feats[i : i + len(b)])
        i += len(b)
    return WindowFeatures(full=feats[0], boxes=boxes, feats=out)


def accumulate(boxes: np.ndarray, values: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Mean of window values per cell of a grid x grid normalised map. Returns float32."""
    total = np.zeros((grid, grid), np.float64)
    count = np.zeros((grid, grid), np.float64)
    for (x0, y0, x1, y1), v in zip(boxes, values, strict=True):
        c0, r0 = int(round(x0 * grid)), int(round(y0 * grid))
        c1, r1 = max(c0 + 1, int(round(x1 * grid))), max(r0 + 1, int(round(y1 * grid)))
        total[r0:r1, c0:c1] += v
        count[r0:r1, c0:c1] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


@dataclass
class ClipScores:
    """One image's scores. Maps are GRIDxGRID, normalised coordinates."""

    p_image: float
    zs_map: np.ndarray
    fs_image: float | None = None
    fs_map: np.ndarray | None = None

    @property
    def zs_raw(self) -> float:
        """Zero-shot raw score: mean of the image and the highest window P(anomalous)."""
        return 0.5 * (self.p_image + float(self.zs_map.max()))

    @property
    def raw(self) -> float:
        """The tool's raw score: few-shot distance (image + worst window) when references exist."""
        if self.fs_map is None:
            return self.zs_raw
        return float(self.fs_image) + float(self.fs_map.max())


def score_windows(
    q: WindowFeatures, text: np.ndarray, logit_scale: float, refs: list[WindowFeatures]
) -> ClipScores:
    """Zero-shot (and, with `refs`, few-shot) scores of `q`. text: 2xD (normal, anomalous)."""

    def p_anom(feats: np.ndarray) -> np.ndarray:
        logits = logit_scale * feats @ text.T
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e[:, 1] / e.sum(axis=1)

    p_image = float(p_anom(q.full[None])[0])
    zs_map = np.mean([accumulate(b, p_anom(f)) for b, f in zip(q.boxes, q.feats, strict=True)], axis=0)
    if not refs:
        return ClipScores(p_image, zs_map)
    ref_full = np.stack([r.full for r in refs])
    fs_image = float(0.5 * (1.0 - (ref_full @ q.full).max()))
    maps = []
    for s, (b, f) in enumerate(zip(q.boxes, q.feats, strict=True)):
        bank = np.concatenate([r.feats[s] for r in refs])
        dist = 0.5 * (1.0 - (f @ bank.T).max(axis=1))
        maps.append(accumulate(b, dist))
    return ClipScores(p_image, zs_map, fs_image, np.mean(maps, axis=0))


def get_bundle(settings: ToolSettings) -> ClipBundle:
    """The loaded CLIP model for these settings (cached per process)."""
    key = (settings.clip_model, settings.clip_pretrained, settings.device, str(settings.weights_dir))
    with _LOCK:
        if key not in _BUNDLES:
            _BUNDLES[key] = load_clip(settings)
        return _BUNDLES[key]


@register
class ClipSimilarity(Tool):
    name = "clip_similarity"
    description = (
        "WinCLIP-style CLIP check: compares the image and sliding windows with 'normal' and 'damaged' "
        "text prompts for the category (zero-shot), and with windows of the normal references when "
        "there are any (few-shot). Returns a calibrated score, a window-level map and top regions. "
        "Works on crops too (pass a zoom id)."
    )

    class Input(ToolInput):
        image_id: str | None = Field(None, description="image to score; default: the query")
        window_fracs: list[float] = Field(
            default_factory=lambda: [0.5, 0.3], min_length=1, max_length=4,
            description="window sides as fractions of the image side (one map scale each)",
        )
        use_references: bool = Field(True, description="few-shot window memory when references exist")
        top_k: int = Field(3, ge=1, le=10, description="how many regions to return")

    class Output(ToolOutput):
        zero_shot_p_anomalous: float
        max_window_p_anomalous: float
        fewshot_distance: float | None = None
        max_window_distance: float | None = None
        zero_shot_z: float | None = None
        n_references: int = 0
        n_windows: int = 0
        calibrated: bool = False
        fewshot_map_path: str | None = None
        zero_shot_map_path: str | None = None

    def _setup(self, ctx: ToolContext) -> None:
        from tools.weights import WeightsNotFoundError

        try:
            self.bundle = get_bundle(ctx.settings)
        except WeightsNotFoundError as exc:
            raise ToolError(f"clip_similarity is unavailable: {exc}") from None

    def _text(self, ctx: ToolContext) -> np.ndarray:
        key = ("clip_text", self.bundle.key, ctx.category)
        if key not in ctx.cache:
            normal, anomalous = build_prompts(ctx.category)
            rows = []
            for prompts in (normal, anomalous):
                mean = self.bundle.encode_texts(prompts).mean(axis=0)
                rows.append(mean / max(np.linalg.norm(mean), 1e-12))
            ctx.cache[key] = np.stack(rows).astype(np.float32)
        return ctx.cache[key]

    def _windows(self, ctx: ToolContext, image_id: str, fracs: tuple[float, ...]) -> WindowFeatures:
        img = ctx.images.get(image_id)
        key = ("clip_windows", self.bundle.key, img.digest, fracs)
        if key not in ctx.cache:
            ctx.cache[key] = embed_windows(self.bundle, img.pixels, fracs)
        return ctx.cache[key]

    def _calibrators(self, ctx, refs: list[str], fracs, text, scale) -> tuple[Calibrator, Calibrator]:
        """(few-shot, zero-shot) calibrators fitted on the references' own scores."""
        digests = tuple(ctx.images.get(r).digest for r in refs)
        key = ("clip_calibrator", self.bundle.key, digests, fracs, ctx.category)
        if key not in ctx.cache:
            feats = [self._windows(ctx, r, fracs) for r in refs]
            if len(refs) >= 2:
                normal = [score_windows(f, text, scale, feats[:i] + feats[i + 1 :]) for i, f in enumerate(feats)]
            else:
                copies = augmented_copies(ctx.images.get(refs[0]).pixels, n=2)
                normal = [score_windows(embed_windows(self.bundle, c, fracs), text, scale, feats) for c in copies]
            ctx.cache[key] = (Calibrator.fit([n.raw for n in normal]), Calibrator.fit([n.zs_raw for n in normal]))
        return ctx.cache[key]

    def _run(self, args: Input, ctx: ToolContext) -> Output:
        image_id = ctx.require_image(args.image_id)
        if any(not 0.05 <= f <= 1.0 for f in args.window_fracs):
            msg = f"window_fracs must lie in [0.05, 1], got {args.window_fracs}"
            raise ToolError(msg)
        fracs = tuple(sorted({round(f, 4) for f in args.window_fracs}, reverse=True))
        text = self._text(ctx)
        scale = float(min(100.0, self.bundle.model.logit_scale.exp().item()))
        refs = [r for r in ctx.reference_ids if r != image_id] if args.use_references else []
        q = self._windows(ctx, image_id, fracs)
        ref_feats = [self._windows(ctx, r, fracs) for r in refs]
        scores = score_windows(q, text, scale, ref_feats)
        img = ctx.images.get(image_id)
        hw = (img.height, img.width)
        zs_map = resize_map(scores.zs_map, hw)
        zs_path, zs_regions, _ = publish_map(ctx, "clip_zs", image_id, zs_map, k=args.top_k, label="CLIP window")
        fs_path = None
        if scores.fs_map is not None:
            # with references the few-shot map localises; the zero-shot map stays available
            fs_path, regions, _ = publish_map(
                ctx, "clip_fs", image_id, resize_map(scores.fs_map, hw), k=args.top_k,
                label="unlike reference windows",
            )
            map_path = fs_path
        else:
            map_path, regions = zs_path, zs_regions

        calibrated = bool(refs)
        zs_z = None
        if refs:
            cal, zs_cal = self._calibrators(ctx, refs, fracs, text, scale)
            score = cal(scores.raw)
            zs_z = zs_cal.z(scores.zs_raw)
            how = "leave-one-out over" if len(refs) >= 2 else "augmented copies of"
            cal_text = (
                f"Few-shot raw score {scores.raw:.3g} vs the references' {cal.center:.3g} +- "
                f"{cal.spread:.3g} ({how} {len(refs)} reference(s)): {cal.z(scores.raw):+.1f} spreads "
                f"-> calibrated {score:.2f}. Zero-shot score {scores.zs_raw:.2f} is {zs_z:+.1f} spreads "
                "from the references'."
            )
        else:
            score = scores.zs_raw
            cal_text = (
                f"No references, so the score {score:.2f} is the uncalibrated zero-shot probability "
                "(CLIP zero-shot probabilities are often biased; trust its ranking more than its level)."
            )
        n_windows = sum(len(b) for b in q.boxes)
        top = regions[0].bbox_xyxy if regions else None
        parts = [
            f"CLIP {self.bundle.key} on {image_id!r} ({n_windows} windows at scales "
            f"{', '.join(f'{f:.2f}' for f in fracs)}): zero-shot P(anomalous | "
            f"'{(ctx.category or 'object')}') = {scores.p_image:.2f} for the whole image, "
            f"up to {float(scores.zs_map.max()):.2f} for a window."
        ]
        if scores.fs_map is not None:
            parts.append(
                f"Few-shot: whole-image distance to the nearest reference {scores.fs_image:.3f}; the "
                f"least reference-like window scores {float(scores.fs_map.max()):.3f} (0 = identical)"
                + (f", strongest region {list(top)}." if top else ".")
            )
        elif top:
            parts.append(f"Highest zero-shot region {list(top)}.")
        parts.append(cal_text)
        return self.Output(
            score=float(score), raw_score=float(scores.raw), regions=regions, summary=" ".join(parts),
            map_path=map_path, zero_shot_p_anomalous=scores.p_image,
            max_window_p_anomalous=float(scores.zs_map.max()),
            fewshot_distance=scores.fs_image,
            max_window_distance=None if scores.fs_map is None else float(scores.fs_map.max()),
            zero_shot_z=zs_z, n_references=len(refs), n_windows=n_windows, calibrated=calibrated,
            fewshot_map_path=fs_path, zero_shot_map_path=zs_path,
        )
