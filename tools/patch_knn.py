"""`patch_knn`: PatchCore-style few-shot anomaly scoring against the session's normal references.

Method (chosen with `evals/bench/patch_knn_protocol.py` on the realsets dev folds and the synthetic
set, beside a plain PatchCore; the table is in the README):
1. Greyscale images (R == G == B) are flat-fielded (divided by a heavily blurred copy, which
   removes vignetting and slow illumination gradients) and standardised (`grey_norm`); colour
   images are left alone. Each image is resized, keeping its aspect ratio, to about
   `resolution`^2 pixels (`scale_mode="area"`: the pixel count a 224 px square PatchCore sees).
2. Multi-layer backbone features (EfficientNet-Lite0 blocks 4 and 10, strides 8 and 16), each
   averaged over a 3x3 neighbourhood and upsampled to the finest grid, give two views of each
   patch (`layer_norm="image+pos,patch+image"`), from one backbone pass: (a) the layers scaled
   by their mean norm in the image (how much structure a patch has: objects, missing parts) with
   the patch's relative (x, y) position times `pos_weight` (a part that is normal in itself but
   in the wrong place: swapped or misplaced parts); (b) the layers L2-normalised per patch
   (texture detail) beside the image-scaled ones, without the position (parts that move or turn
   a little between normal images).
3. Per view, one memory bank of the reference patches (75% of each reference's, by greedy
   k-centre, `coreset`; a plain PatchCore keeps all), searched with a faiss flat L2 index: a
   patch's distance to its nearest reference patch. Each view's distances are divided by the
   references' typical own score in that view (leave-one-out median; 1 = as far as a normal
   reference) and the views are averaged: a defect that either view sees counts, and neither
   view's scale dominates. `augment="flips"` or "d4" adds
   flipped/rotated copies (8x the bank and the search; the position is then left out).
4. Image score = mean of the top 1% of patch scores, the outer two rings of cells left out
   (`topk`, `border`: border cells see the network's zero padding and the frame of the part).
   The map is the patch scores resized to the original HxW and slightly smoothed.
5. Calibration (`tools.calibration.Calibrator`) on the references' own scores: leave-one-out for
   k >= 2, augmented copies (sub-stride shift + small rotation + brightness) of the single
   reference for k = 1. Regions: connected components of the map above both the references' "edge
   of normal" (the raw score whose calibrated score is 0.5) and half-way from the map's median to
   its peak; when nothing exceeds the edge, the single strongest peak.

Choices made per reference set at run time, from the references alone (`ReferenceBank.choices`,
cited in the summary): grey normalisation only when the references are greyscale; the position
only when the references' parts sit in fixed places (k >= 2: the median displacement between a
structured patch and its nearest patch in another reference is below `max_displacement` of the
image; textures and parts placed at random match far away, where the position would only add
cost to normal images).

References are embedded once per process: features and banks are cached in `ctx.cache` keyed by
backbone id, config and the references' pixel digests (an LRU bounded in bytes, `tools.cache`), and
banks are stored on disk for the next process (`tools.bank_store`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from tools import defect_bank
from tools.backbones import Backbone, get_backbone
from tools.bank_store import stored_bank
from tools.base import Tool, ToolContext, ToolError, ToolInput, ToolOutput
from tools.calibration import Z_EDGE, Calibrator
from tools.calibration import ratio_to_normal as _ratio
from tools.defect_bank import Boost
from tools.maps import resize_map, top_regions, write_map_png
from tools.registry import register
from tools.types import HardNormals, KnownDefect

AUGMENTS = ("none", "flips", "d4")
EDGE_LOO = 1.15  # k >= 2: the edge of normal is at most this times the references' median score
EDGE_SINGLE = 2.0  # k = 1: the edge is this times the augmented copies' median score
GREY_NORMS = ("none", "standardise", "flatfield")


@dataclass(frozen=True)
class PatchKnnConfig:
    """How patch_knn computes features and scores.

    Attributes:
        backbone: backbone name (None: `ToolSettings.backbone`).
        layers: backbone taps (None: the backbone's default layers).
        resolution: working size in pixels: each image keeps its aspect ratio and gets about
            resolution^2 pixels (`scale_mode="area"`), or its long side becomes `resolution`
            ("fit"), or every image is scaled by the factor that gives the references' median
            long side `resolution` ("refs").
        scale_mode: "area", "fit" or "refs" (see `resolution`).
        square: squash every image to resolution x resolution instead (the plain baseline).
        pool: neighbourhood average pooling size on each feature map (1: none).
        layer_norm: the feature views, separated by ",": each view has its own bank, and the
            image's patch scores are the views' nearest-patch distances, each divided by the
            references' typical own score in that view, averaged. A view is parts joined by "+"
            into one vector per patch: "none" (the layers as they are), "patch" (each layer
            L2-normalised per patch: fine texture detail counts fully), "image" (each layer
            divided by its mean patch norm in the image: keeps how much structure a patch has,
            which matters for objects and missing parts), "pos" (the patch's (x, y) as fractions
            of the width and height, times `pos_weight`; kept only when the references' parts
            sit in fixed places, see `max_displacement`, and never with flipped copies in the
            bank). The default pairs a view with the position and one without it.
        augment: add flipped ("flips": h, v, hv) or all 8 dihedral ("d4") copies of each
            reference (for parts that appear in any orientation; 4x or 8x the bank and search).
        topk: fraction of the highest patch scores averaged into the image score (0: the max).
        blur_sigma: map smoothing, in feature-grid cells of the finest layer.
        max_side: longest side ever fed to the backbone (pixels).
        deep_weight: factor on every layer after the first (after `layer_norm`): > 1 weighs the
            more semantic layers higher in the distance.
        grey_norm: for greyscale images only: "none", "standardise" (zero mean, unit std, mapped
            back to 128 +- 40) or "flatfield" (divide by a heavily blurred copy: removes slow
            illumination gradients, keeps local structure).
        flat_scale: the flat-field background blur's sigma, as a fraction of the long side.
        border: feature cells at the image border left out of the image score (padding effects).
        pos_weight: the "pos" view's weight on position (coordinates in 0..1); a part moved by a
            tenth of the image costs `pos_weight / 10` in feature distance (each layer's patch
            vectors have a mean norm of 1 in that view).
        max_loo: at most this many references are held out for leave-one-out calibration
            (evenly spaced; LOO costs one bank search per held-out reference).
        max_displacement: the position is used only when the references' structured patches
            find their nearest patch in another reference within this fraction of the image
            (median over patches and pairs; k >= 2). Above it the parts do not sit in fixed
            places (a texture, parts placed at random) and the position would only cost.
        coreset: fraction of each reference's patch vectors kept in the bank, per view (greedy
            k-centre: the kept patches cover the rest as closely as possible; 1.0: all), but never
            fewer in all than one reference's patches (k = 1 keeps all). Leave-one-out calibration
            uses the same reduced sets, so the edge of normal stays consistent.
    """

    backbone: str | None = None
    layers: tuple[str, ...] | None = None
    resolution: int = 224
    scale_mode: str = "area"
    square: bool = False
    pool: int = 3
    layer_norm: str = "image+pos,patch+image"
    augment: str = "none"
    topk: float = 0.01
    blur_sigma: float = 0.5
    max_side: int = 1024
    max_loo: int = 8
    deep_weight: float = 1.0
    grey_norm: str = "flatfield"
    flat_scale: float = 0.125
    border: int = 2
    pos_weight: float = 8.0
    max_displacement: float = 0.25
    coreset: float = 0.75

    def key(self) -> str:
        return hashlib.sha1(repr(dataclasses.astuple(self)).encode()).hexdigest()[:12]


def _round_to(v: float, m: int) -> int:
    return max(m * 2, int(round(v / m)) * m)


def view_specs(cfg: PatchKnnConfig) -> list[tuple[str, ...]]:
    """The feature views of `cfg.layer_norm`: one tuple of parts per view ("image+pos,patch+image")."""
    return [tuple(spec.split("+")) for spec in cfg.layer_norm.split(",")]


def _has_pos(cfg: PatchKnnConfig) -> bool:
    return any("pos" in view for view in view_specs(cfg))


def working_size(h: int, w: int, cfg: PatchKnnConfig, ref_long_side: float | None) -> tuple[int, int]:
    """The (h, w) an HxW image is resized to before the backbone; multiples of 32 pixels."""
    if cfg.square:
        return cfg.resolution, cfg.resolution
    if cfg.scale_mode == "refs" and ref_long_side:
        factor = cfg.resolution / ref_long_side
    elif cfg.scale_mode == "area":
        factor = cfg.resolution / float(np.sqrt(h * w))
    else:
        factor = cfg.resolution / max(h, w)
    factor = min(factor, cfg.max_side / max(h, w))
    return _round_to(h * factor, 32), _round_to(w * factor, 32)


def _dihedral(pixels: np.ndarray, augment: str) -> list[np.ndarray]:
    if augment == "none":
        return [pixels]
    flips = [pixels, pixels[:, ::-1], pixels[::-1], pixels[::-1, ::-1]]
    if augment == "flips":
        return [np.ascontiguousarray(p) for p in flips]
    return [np.ascontiguousarray(p) for p in flips] + [np.ascontiguousarray(np.rot90(p)) for p in flips]


def normal_variants(pixels: np.ndarray, stride: int, n: int = 6) -> list[np.ndarray]:
    """Plausible normal variants of one reference (for k=1 calibration): `n` HxWx3 uint8 images.

    Each variant combines a sub-stride shift (a quarter to three quarters of a feature cell, so its
    patches do not coincide with the bank's), a rotation of up to 3 degrees and a +-10% brightness
    change, drawn from a fixed seed (reflected borders).
    """
    h, w = pixels.shape[:2]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        dx, dy = rng.uniform(0.25, 0.75, 2) * stride * rng.choice([-1, 1], 2)
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(rng.uniform(-3, 3)), 1.0)
        m[:, 2] += (dx, dy)
        warped = cv2.warpAffine(pixels, m, (w, h), borderMode=cv2.BORDER_REFLECT_101)
        gain = float(rng.uniform(0.9, 1.1))
        out.append(np.clip(warped.astype(np.float32) * gain, 0, 255).astype(np.uint8))
    return out


def is_grey(pixels: np.ndarray) -> bool:
    """True when every pixel has R == G == B (a greyscale image stored as RGB)."""
    return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())


def flat_background(grey: np.ndarray, scale: float, side: int = 64) -> np.ndarray:
    """HxW float32 illumination estimate (+1): a Gaussian blur with sigma = `scale` x the long side.

    Computed on a copy whose long side is `side` pixels and resized back: the blur keeps nothing
    finer than that, and the cost no longer grows with the image (0.7 s -> 2 ms at 1024 px).
    """
    h, w = grey.shape
    f = min(1.0, side / max(h, w))
    small = cv2.resize(grey, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(small, (0, 0), sigmaX=max(small.shape) * scale)
    return resize_map(blurred, (h, w)) + 1.0


def normalise_grey(pixels: np.ndarray, mode: str, flat_scale: float = 0.125) -> np.ndarray:
    """Intensity normalisation of a greyscale HxWx3 uint8 image (colour images pass unchanged).

    "standardise": zero mean, unit std, mapped back to 128 +- 40. "flatfield": first divide by a
    Gaussian-blurred copy (sigma = `flat_scale` x the long side), which removes slow illumination
    gradients and vignetting and keeps local structure, then standardise.
    """
    if mode == "none" or not is_grey(pixels):
        return pixels
    g = pixels[..., 0].astype(np.float32)
    if mode == "flatfield":
        g = g / flat_background(g, flat_scale) * float(g.mean())
    g = (g - g.mean()) / max(float(g.std()), 1.0) * 40.0 + 128.0
    grey = np.clip(g, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def patch_features(backbone: Backbone, pixels: np.ndarray, size_hw: tuple[int, int],
                   cfg: PatchKnnConfig) -> list[np.ndarray]:
    """Aggregated multi-layer patch features: per view of `cfg.layer_norm`, one vector per patch.

    Args:
        backbone: the feature extractor.
        pixels: HxWx3 uint8 RGB.
        size_hw: working (h, w) in pixels (see `working_size`).
        cfg: the config (layers, pool, layer_norm, pos_weight).

    Returns:
        per view a gh x gw x C_view float32 array (gh = h / finest stride): the view's parts
        joined, the position's two columns ("pos") last. One backbone pass serves every view.
    """
    return compose_views(backbone_maps(backbone, pixels, size_hw, cfg), cfg)


def backbone_maps(backbone: Backbone, pixels: np.ndarray, size_hw: tuple[int, int],
                  cfg: PatchKnnConfig) -> list[torch.Tensor]:
    """The backbone's 1xCxhxw maps at `cfg.layers` for HxWx3 uint8 RGB `pixels` at working (h, w) `size_hw`,
    after `cfg.grey_norm` (before any pooling: configs that differ only in `pool` share them)."""
    x = backbone.to_tensor(normalise_grey(pixels, cfg.grey_norm, cfg.flat_scale), size_hw)
    return backbone.feature_maps(x, cfg.layers or backbone.layers)


def compose_views(maps: list[torch.Tensor], cfg: PatchKnnConfig) -> list[np.ndarray]:
    """Per view of `cfg.layer_norm`, gh x gw x C_view float32 vectors from `backbone_maps` (pooled by
    `cfg.pool`, upsampled to the finest grid)."""
    target = maps[0].shape[-2:]
    pooled = []
    for fmap in maps:
        if cfg.pool > 1:
            fmap = F.avg_pool2d(fmap, cfg.pool, stride=1, padding=cfg.pool // 2, count_include_pad=False)
        if tuple(fmap.shape[-2:]) != tuple(target):
            fmap = F.interpolate(fmap, size=target, mode="bilinear", align_corners=False)
        pooled.append(fmap)
    return [_compose(pooled, view, cfg) for view in view_specs(cfg)]


def _compose(pooled: list[torch.Tensor], view: tuple[str, ...], cfg: PatchKnnConfig) -> np.ndarray:
    """One view's gh x gw x C float32 vectors from the pooled 1xCxhxw layer maps (finest grid)."""
    parts = []
    for part in view:
        if part == "pos":
            continue
        for i, fmap in enumerate(pooled):
            if part == "patch":
                fmap = F.normalize(fmap, dim=1)
            elif part == "image":
                fmap = fmap / fmap.norm(dim=1).mean().clamp_min(1e-6)
            if i > 0 and cfg.deep_weight != 1.0:
                fmap = fmap * cfg.deep_weight
            parts.append(fmap)
    if "pos" in view:
        parts.append(cfg.pos_weight * _coordinates(pooled[0]))
    feats = torch.cat(parts, dim=1)[0].permute(1, 2, 0)
    return np.ascontiguousarray(feats.cpu().numpy(), dtype=np.float32)


def _coordinates(fmap: torch.Tensor) -> torch.Tensor:
    """1x2xhxw tensor: each cell centre's (x, y) as a fraction of the grid's width and height."""
    h, w = fmap.shape[-2:]
    return torch.from_numpy(_cell_positions((h, w)).T.reshape(2, h, w).copy())[None]


def inner_cells(shape: tuple[int, int], border: int) -> tuple[slice, slice]:
    """The (rows, cols) slices of a gh x gw grid without its `border` ring of cells; the whole grid when
    border is 0 or the grid is at most 4 * border cells on a side."""
    if border > 0 and min(shape) > 4 * border:
        return slice(border, -border), slice(border, -border)
    return slice(None), slice(None)


def image_score(patch_map: np.ndarray, topk: float, border: int = 0) -> float:
    """Mean of the top `topk` fraction of patch scores (the max when topk <= 0).

    `border` cells along each edge are left out (when the grid is large enough).
    """
    grid = np.asarray(patch_map, dtype=np.float32)
    flat = grid[inner_cells(grid.shape, border)].ravel()
    if topk <= 0:
        return float(flat.max())
    n = max(1, int(round(topk * flat.size)))
    return float(np.partition(flat, flat.size - n)[-n:].mean())


# faiss searches fewer than `distance_compute_blas_threshold` queries (128000 in this build) with its own
# SIMD loop, which is slow and erratic at these shapes (704 x 2112 vectors: 154-d 8-10 ms, 168-d 7 ms, 304-d
# 6 ms); one BLAS product is 4 ms and steady (measured here 2026-12-04). faiss keeps the setting process-wide; the
# distances agree to float32 rounding (clamped at 0).
BLAS_MIN_QUERIES = 20


def _use_blas_search() -> None:
    import faiss

    faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_QUERIES


def _padded(vectors: np.ndarray, dim: int) -> np.ndarray:
    """(n, c) float32 vectors with zero columns up to `dim` (c <= dim), C-contiguous (banks stored before
    2026-12-04 were padded to 168 columns; zero columns change no distance)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.shape[1] >= dim:
        return vectors
    out = np.zeros((vectors.shape[0], dim), np.float32)
    out[:, : vectors.shape[1]] = vectors
    return out


def _flat_index(vectors: np.ndarray):
    """An exact L2 faiss index of (n, c) float32 vectors."""
    import faiss

    _use_blas_search()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    return index


def nn_distance(index, feats: np.ndarray) -> np.ndarray:
    """Distance of each gh x gw x C feature to its nearest bank vector -> gh x gw float32."""
    gh, gw, c = feats.shape
    _use_blas_search()  # also for banks read back from disk
    dist, _ = index.search(_padded(feats.reshape(-1, c), index.d), 1)
    return np.sqrt(np.maximum(dist[:, 0], 0.0)).reshape(gh, gw).astype(np.float32)


def median_displacement(feats: list[np.ndarray]) -> float:
    """How far the references' structured patches find their match in another reference.

    For every ordered pair of references (i, j), the patches of i whose vector norm is at least
    the median (structure, not background) are matched to their nearest patch of j; the result is
    the median over pairs of the median distance between a patch's and its match's relative
    (x, y) positions (fractions of the width and height; 0 = same place, about 0.5 = anywhere).

    Args:
        feats: per reference a gh x gw x C feature array without position columns.
    """
    flat = [f.reshape(-1, f.shape[-1]) for f in feats]
    indices = [_flat_index(v) for v in flat]
    positions = [_cell_positions(f.shape[:2]) for f in feats]
    per_pair = []
    for i, vi in enumerate(flat):
        norms = np.linalg.norm(vi, axis=1)
        keep = norms >= np.median(norms)
        query = np.ascontiguousarray(vi[keep])
        for j, index in enumerate(indices):
            if i == j:
                continue
            _, nearest = index.search(_padded(query, index.d), 1)
            shift = positions[i][keep] - positions[j][nearest[:, 0]]
            per_pair.append(float(np.median(np.linalg.norm(shift, axis=1))))
    return float(np.median(per_pair))


def k_centre(vectors: np.ndarray, fraction: float) -> np.ndarray:
    """The `fraction` of (n, c) vectors chosen by greedy k-centre (each next one farthest from those
    kept; starts at the vector nearest the mean), as PatchCore's coreset. fraction >= 1: all."""
    n = vectors.shape[0]
    m = int(np.ceil(n * fraction))
    if fraction >= 1.0 or m >= n:
        return vectors
    # squared distances by one matrix-vector product per step (|x|^2 - 2 x.c + |c|^2): the same order as
    # torch.cdist's, without its per-call overhead (a bank of 8 references went from ~40 s to < 1 s here)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x, x)

    def dist2(i: int) -> np.ndarray:
        return np.maximum(sq - 2.0 * (x @ x[i]) + sq[i], 0.0)

    mean = x.mean(0)
    first = int(np.argmin(sq - 2.0 * (x @ mean)))
    kept = [first]
    nearest = dist2(first)
    for _ in range(m - 1):
        nxt = int(nearest.argmax())
        kept.append(nxt)
        np.minimum(nearest, dist2(nxt), out=nearest)
    return np.ascontiguousarray(vectors[np.sort(kept)])


def combine_grids(grids: list[np.ndarray], scales: list[float]) -> np.ndarray:
    """The views' gh x gw distance grids, each divided by its scale, averaged (float32)."""
    return np.mean([g / s for g, s in zip(grids, scales, strict=True)], axis=0).astype(np.float32)


def _strip(feats: np.ndarray, view: tuple[str, ...], drop_pos: bool) -> np.ndarray:
    return without_position(feats) if drop_pos and "pos" in view else feats


def without_position(feats: np.ndarray) -> np.ndarray:
    """A gh x gw x C feature array without its two position columns (the last two), contiguous."""
    return np.ascontiguousarray(feats[..., :-2])


def _cell_positions(grid_hw: tuple[int, int]) -> np.ndarray:
    """(gh*gw, 2) float32: each cell centre's (x, y) as a fraction of the grid, row-major."""
    gh, gw = grid_hw
    ys, xs = np.meshgrid((np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


@dataclass
class ReferenceBank:
    """The references' patch bank and the calibration fitted on their own scores.

    Attributes:
        indexes: per view, a faiss flat L2 index over every reference patch vector (and augmented
            copies).
        views: the configured views (`view_specs`), one per index.
        scales: per view, the references' median own image score in that view (leave-one-out or
            augmented copies): each view's distances are divided by it before the views are averaged,
            so every view counts alike (one view: 1.0, raw distances).
        drop_pos: the features' position columns (the last two) are left out of the comparison.
        calibrator: maps a raw image score to [0, 1].
        normal_scores: the references' raw scores used to fit it (leave-one-out or augmented).
        ref_long_side: median long side of the references (pixels), sets the "refs" scale.
        stride: finest feature stride (pixels of the working image).
        n_refs: number of references; calibration: "leave-one-out" or "augmented copies".
        choices: what was decided for this reference set at run time, and why (sentences).
        typical_patch: median patch distance of the references' own grids (raw units): where a
            normal patch sits, the bottom of the display scale.
    """

    indexes: list
    views: list[tuple[str, ...]]
    scales: list[float]
    drop_pos: bool
    calibrator: Calibrator
    normal_scores: list[float]
    ref_long_side: float
    stride: int
    n_refs: int
    calibration: str
    choices: list[str]
    typical_patch: float

    def __post_init__(self) -> None:
        self.views = [tuple(v) for v in self.views]  # a stored bank's JSON gives lists

    def vectors(self, feats: list[np.ndarray]) -> list[np.ndarray]:
        """Per-view gh x gw x C feature arrays as this bank compares them (position kept or dropped)."""
        return [_strip(f, view, self.drop_pos) for f, view in zip(feats, self.views, strict=True)]

    def grid(self, feats: list[np.ndarray]) -> np.ndarray:
        """Patch-score grid (gh x gw): per view, each patch's distance to its nearest reference patch
        divided by the view's scale; the views averaged."""
        grids = [nn_distance(index, f) for index, f in zip(self.indexes, self.vectors(feats), strict=True)]
        return combine_grids(grids, self.scales)

    @property
    def edge(self) -> float:
        """Raw score at which the calibrated score is 0.5 ("edge of normal")."""
        return self.calibrator.edge


@dataclass
class PatchKnnResult:
    """One image's measurement: raw score, map at original HxW (float32, raw units), the bank, and the
    patch grid's (gh, gw)."""

    raw_score: float
    score: float
    anomaly_map: np.ndarray
    bank: ReferenceBank
    grid_shape: tuple[int, int] = (0, 0)
    known: Boost | None = None  # what the known defects did (None: no labelled anomaly to compare with)
    plain_raw: float | None = None  # the raw score before the known defects' boost

    def known_defect(self) -> KnownDefect | None:
        """The labelled anomaly that raised the score and by how much (None: none did)."""
        if self.known is None or self.known.example is None or self.plain_raw is None:
            return None
        return KnownDefect(example=self.known.example, ratio=round(self.known.ratio, 4),
                           raw_before=round(self.plain_raw, 4), raw_after=round(self.raw_score, 4))


class PatchKnnOutput(ToolOutput):
    """patch_knn's result; `regions` are in original image pixels, `map_path` is an HxW PNG."""

    image_id: str
    backbone: str
    n_references: int
    calibration: str = Field(description="'leave-one-out' (k>=2) or 'augmented copies' (k=1)")
    normal_range: tuple[float, float] = Field(description="min/max raw score of the references")
    reference_scores: list[float] = Field(default_factory=list, description="the references' own raw scores "
                                          "(each held out, or augmented copies of one), in the bank's order")
    edge_of_normal: float = Field(description="raw score whose calibrated score is 0.5")
    choices: list[str] = Field(default_factory=list, description="what was chosen for these references, and why")
    known_defect: KnownDefect | None = Field(None, description="the labelled anomaly that raised the score, if any")
    hard_normals: HardNormals | None = Field(None, description="the score without the references the inspector "
                                             "marked as false alarms, when any are among them")


class PatchKnnInput(ToolInput):
    image_id: str | None = Field(None, description="image to score; omit for the query image")
    top_k_regions: int = Field(3, ge=1, le=10, description="at most this many regions")


def _position_words(box: tuple[int, int, int, int], w: int, h: int) -> str:
    cx, cy = (box[0] + box[2]) / 2.0 / w, (box[1] + box[3]) / 2.0 / h
    vert = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    horiz = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"
    return "centre" if (vert, horiz) == ("middle", "centre") else f"{vert}-{horiz}"


@register
class PatchKnn(Tool):
    """PatchCore-style few-shot scorer (see the module docstring)."""

    name = "patch_knn"
    description = (
        "Compare every patch of an image with the normal reference images (nearest-neighbour "
        "feature distance): returns a calibrated anomaly score, an anomaly map and the most "
        "anomalous regions as boxes. Needs at least one normal reference."
    )
    Input = PatchKnnInput
    Output = PatchKnnOutput

    def __init__(self, config: PatchKnnConfig | None = None) -> None:
        super().__init__()
        self.config = check_config(config or PatchKnnConfig())
        self.backbone: Backbone | None = None  # per-call state lives in PatchKnnResult, never here

    def _setup(self, ctx: ToolContext) -> None:
        import faiss

        faiss.omp_set_num_threads(max(1, ctx.settings.threads or torch.get_num_threads()))
        if not ctx.settings.patch_position and _has_pos(self.config):
            specs = ["+".join(p for p in view if p != "pos") or "none" for view in view_specs(self.config)]
            self.config = dataclasses.replace(self.config, layer_norm=",".join(dict.fromkeys(specs)))
        self.backbone = get_backbone(self.config.backbone or ctx.settings.backbone, ctx.settings)

    # -- features and bank ------------------------------------------------------------------
    def _features(self, ctx: ToolContext, pixels: np.ndarray, digest: str, size_hw, tag: str) -> list[np.ndarray]:
        assert self.backbone is not None
        cfg = self.config
        feat_cfg = (cfg.layers, cfg.pool, cfg.layer_norm, cfg.deep_weight, cfg.grey_norm, cfg.flat_scale,
                    cfg.pos_weight)
        key = ("patch_knn:feat", self.backbone.model_id, feat_cfg, digest, tuple(size_hw), tag)
        feats = ctx.cache.get(key)
        if feats is None:
            # the backbone pass is shared with the other scale (`patch_knn_fine`): only the pooling differs
            maps_key = ("patch_knn:maps", self.backbone.model_id, (cfg.layers, cfg.grey_norm, cfg.flat_scale),
                        digest, tuple(size_hw), tag)
            maps = ctx.cache.get(maps_key)
            if maps is None:
                maps = backbone_maps(self.backbone, pixels, size_hw, cfg)
                ctx.cache[maps_key] = maps
            feats = compose_views(maps, cfg)
            ctx.cache[key] = feats
        return feats

    def reference_bank(self, ctx: ToolContext, without_hard_normals: bool = False) -> ReferenceBank:
        """The cached bank for the session's references (built on first use); `without_hard_normals`: of the
        references other than the hard normals (`ToolContext.bank_only_ids`) alone."""
        self.setup(ctx)
        assert self.backbone is not None
        ref_ids = ctx.require_references(self.name)
        if without_hard_normals:
            ref_ids = [i for i in ref_ids if i not in ctx.bank_only_ids]
        refs = [ctx.images.get(i) for i in ref_ids]
        calibrate = [i not in ctx.bank_only_ids for i in ref_ids]
        key = ("patch_knn:bank", self.backbone.model_id, self.config.key(), tuple(r.digest for r in refs),
               tuple(calibrate))
        bank = ctx.cache.get(key)
        if bank is None:
            bank = stored_bank(ctx.settings.bank_dir, self.backbone, self.config, refs,
                               lambda: self._build_bank(ctx, refs, calibrate), calibrate)
            ctx.cache[key] = bank
        return bank

    def _build_bank(self, ctx: ToolContext, refs, calibrate: list[bool] | None = None) -> ReferenceBank:
        """The bank of `refs`; `calibrate[i]` False: reference i widens the bank but does not calibrate the edge
        of normal (a hard normal). With no reference left to calibrate, all do; with one, its augmented copies."""
        cfg = self.config
        assert self.backbone is not None
        long_side = float(np.median([max(r.height, r.width) for r in refs]))
        views = view_specs(cfg)
        plain: list[list[np.ndarray]] = []  # [ref] -> per view gh x gw x C of the reference itself
        copies: list[list[list[np.ndarray]]] = []  # [ref] -> its flipped/rotated copies' features
        for ref in refs:
            for a, variant in enumerate(_dihedral(ref.pixels, cfg.augment)):
                size = working_size(variant.shape[0], variant.shape[1], cfg, long_side)
                feats = self._features(ctx, variant, ref.digest, size, f"d4:{a}")
                if a == 0:
                    plain.append(feats)
                    copies.append([])
                else:
                    copies[-1].append(feats)
        use_pos, choices = self._choose(refs, plain)
        drop_pos = _has_pos(cfg) and not use_pos

        def rows(f: np.ndarray, v: int) -> np.ndarray:
            f = _strip(f, views[v], drop_pos)
            return f.reshape(-1, f.shape[-1])

        # per view, per reference: its patch vectors (and its copies')
        keep = max(cfg.coreset, 1.0 / len(refs))  # the bank never holds fewer patches than one reference has
        per_ref = [[k_centre(np.concatenate([rows(f[v], v) for f in [plain[i], *copies[i]]]), keep)
                    for i in range(len(refs))] for v in range(len(views))]
        stride = min(self.backbone.taps[name][0] for name in (cfg.layers or self.backbone.layers))
        indexes = [_flat_index(np.concatenate(per_ref[v])) for v in range(len(views))]
        view_grids: list[list[np.ndarray]] = []  # [normal image] -> per view its distance grid
        # the references that calibrate (all when none is marked): two or more are held out one at a time; a
        # single one is judged by its augmented copies against the whole bank (as with k = 1)
        pool = [i for i in range(len(refs)) if calibrate is None or calibrate[i]] or list(range(len(refs)))
        if len(pool) < len(refs):
            choices.append(f"{len(refs) - len(pool)} reference(s) the inspector marked as false alarms widen the "
                           f"bank but do not set the edge of normal (calibrated on the other {len(pool)})")
        if len(pool) >= 2:
            held_out = [pool[j] for j in np.unique(np.linspace(0, len(pool) - 1, min(len(pool), cfg.max_loo))
                                                   .round().astype(int))]
            for i in held_out:
                view_grids.append([
                    nn_distance(_flat_index(np.concatenate([r for j, r in enumerate(per_ref[v]) if j != i])),
                                _strip(plain[i][v], views[v], drop_pos))
                    for v in range(len(views))])
            how = "leave-one-out"
        else:
            only = refs[pool[0]]
            for n, variant in enumerate(normal_variants(only.pixels, stride)):
                size = working_size(variant.shape[0], variant.shape[1], cfg, long_side)
                feats = self._features(ctx, variant, only.digest, size, f"var:{n}")
                view_grids.append([nn_distance(indexes[v], _strip(feats[v], views[v], drop_pos))
                                   for v in range(len(views))])
            how = "augmented copies"
        scales = [1.0] * len(views)
        if len(views) > 1:  # each view's typical own score becomes 1, so the views count alike
            scales = [max(float(np.median([image_score(g[v], cfg.topk, cfg.border) for g in view_grids])), 1e-6)
                      for v in range(len(views))]
        grids = [combine_grids(g, scales) for g in view_grids]
        normal = [image_score(g, cfg.topk, cfg.border) for g in grids]
        return ReferenceBank(indexes, views, scales, drop_pos, self._calibrate(normal, how), normal, long_side,
                             stride, len(refs), how, choices, float(np.median([np.median(g) for g in grids])))

    @staticmethod
    def _calibrate(normal: list[float], how: str) -> Calibrator:
        """The "edge of normal" (calibrated 0.5) from the references' own scores.

        The edge is a fixed factor of their median: EDGE_LOO for leave-one-out scores (k >= 2; a
        spread from four scores is noise, and the median with k - 1 references already sits above a
        test image's with k), EDGE_SINGLE for augmented copies (k = 1: they vary far less than real
        normal images). Both factors were chosen on the realsets dev folds and the synthetic set from
        recall and false-positive rate at the default threshold (k=4, dev: 1.2 -> 1.15 moved the mean
        recall 0.75 -> 0.82 and the false-positive rate 0.08 -> 0.11).
        """
        return calibrate_edge(normal, how)

    def _choose(self, refs, plain: list[list[np.ndarray]]) -> tuple[bool, list[str]]:
        """Run-time choices from the references alone: (keep the position, sentences saying why).

        `plain`: per reference, its per-view features (the placement test uses the widest view).
        """
        cfg = self.config
        choices = []
        if cfg.grey_norm != "none":
            greys = sum(is_grey(r.pixels) for r in refs)
            if greys == len(refs):
                choices.append(f"greyscale references: {cfg.grey_norm} intensity normalisation")
            elif greys:
                choices.append(f"{greys} of {len(refs)} references are greyscale: only those are normalised")
        if cfg.augment != "none":
            choices.append(f"bank holds {cfg.augment} copies of each reference (parts in any orientation)")
        if not _has_pos(cfg):
            return False, choices
        if cfg.augment != "none":
            choices.append("position left out: the bank holds flipped/rotated copies")
            return False, choices
        if len(refs) < 2:
            choices.append("position kept: one reference cannot show whether parts sit in fixed places")
            return True, choices
        sample = np.unique(np.linspace(0, len(plain) - 1, min(len(plain), cfg.max_loo)).round().astype(int))
        views = view_specs(cfg)
        wide = max(range(len(views)), key=lambda v: len([p for p in views[v] if p != "pos"]))
        shift = median_displacement([_strip(plain[i][wide], views[wide], True) for i in sample])  # k(k-1) searches: at most max_loo refs
        if shift > cfg.max_displacement:
            choices.append(f"position left out: the references' parts match {shift:.2f} of the image apart "
                           f"(> {cfg.max_displacement:g}), so they do not sit in fixed places")
            return False, choices
        choices.append(f"position kept: the references' parts match {shift:.2f} of the image apart "
                       f"(<= {cfg.max_displacement:g}: fixed places)")
        return True, choices

    # -- scoring ------------------------------------------------------------------------------
    def measure(self, ctx: ToolContext, image_id: str | None = None) -> PatchKnnResult:
        """Score one image: raw and calibrated score, and its HxW float32 map (raw units).

        Nothing is kept on the tool instance (runs may share it): everything is in the result.
        """
        self.setup(ctx)
        image_id = ctx.require_image(image_id)
        bank = self.reference_bank(ctx)
        img = ctx.images.get(image_id)
        grid, boost, plain = self._grid(ctx, img, bank)
        raw = image_score(grid, self.config.topk, self.config.border)
        cell = img.width / grid.shape[1]
        amap = resize_map(grid, (img.height, img.width), blur_sigma=self.config.blur_sigma * cell)
        return PatchKnnResult(raw, bank.calibrator(raw), amap, bank, tuple(grid.shape), boost, plain)

    def without_hard_normals(self, ctx: ToolContext, image_id: str | None = None) -> HardNormals | None:
        """The image's score against the references other than the hard normals (`ToolContext.bank_only_ids`):
        the bank a run without them builds, so exactly that run's score; None when no hard normal is among the
        references, or nothing else is. Costs one more bank search (and a bank build the first time)."""
        ref_ids = ctx.require_references(self.name)
        hard = [i for i in ref_ids if i in ctx.bank_only_ids]
        if not hard or len(hard) == len(ref_ids):
            return None
        other = self.reference_bank(ctx, without_hard_normals=True)
        raw = image_score(self._grid(ctx, ctx.images.get(ctx.require_image(image_id)), other)[0], self.config.topk,
                          self.config.border)
        return HardNormals(n=len(hard), raw_without=float(raw), score_without=float(other.calibrator(raw)),
                           reference_scores_without=[float(v) for v in other.normal_scores])

    def _grid(self, ctx: ToolContext, img, bank: ReferenceBank) -> tuple[np.ndarray, Boost | None, float]:
        """(the image's gh x gw patch-score grid against `bank`, raised by the known defects unless it is one of
        them; what the known defects did, or None; its raw score before them)."""
        size = working_size(img.height, img.width, self.config, bank.ref_long_side)
        feats = self._features(ctx, img.pixels, img.digest, size, "query")
        grid = bank.grid(feats)
        plain = image_score(grid, self.config.topk, self.config.border)
        known = self.defect_bank(ctx, bank)
        boost = None
        if known is not None and img.digest not in {ctx.images.get(i).digest for i, _ in ctx.known_defects}:
            boost = defect_bank.boost(bank, known, feats, grid)
            grid = boost.grid
        return grid, boost, plain

    def defect_bank(self, ctx: ToolContext, bank: ReferenceBank) -> defect_bank.DefectBank | None:
        """The bank of the context's labelled anomalous examples (`ctx.known_defects`) against `bank`, cached;
        None without any."""
        if not ctx.known_defects:
            return None
        examples = [(ctx.images.get(i), name) for i, name in ctx.known_defects]
        key = ("patch_knn:defects", self.backbone.model_id, self.config.key(),
               tuple(r.digest for r in (ctx.images.get(i) for i in ctx.reference_ids)), bank.edge, bank.n_refs,
               tuple((img.digest, name) for img, name in examples))
        found = ctx.cache.get(key)
        if found is None:
            feats = [self._features(ctx, img.pixels, img.digest,
                                    working_size(img.height, img.width, self.config, bank.ref_long_side), "known")
                     for img, _ in examples]
            found = defect_bank.build(bank, feats, [name for _, name in examples], self.config.topk,
                                      self.config.border)
            ctx.cache[key] = found
        return found

    def _inner(self, amap: np.ndarray, width: int, grid_shape: tuple[int, int]) -> np.ndarray:
        """The map with its outer `border` feature cells set to the map's median (HxW float32)."""
        if self.config.border <= 0:
            return amap
        grid_w = grid_shape[1]
        if grid_w <= 4 * self.config.border:
            return amap
        px = int(round(self.config.border * width / grid_w))
        out = np.full_like(amap, float(np.median(amap)))
        out[px:-px, px:-px] = amap[px:-px, px:-px]
        return out

    def anomaly_map(self, ctx: ToolContext, image_id: str | None = None) -> np.ndarray:
        """HxW float32 anomaly map (raw patch distances) of an image at its original resolution."""
        return self.measure(ctx, image_id).anomaly_map

    def _run(self, args: PatchKnnInput, ctx: ToolContext) -> PatchKnnOutput:
        image_id = ctx.require_image(args.image_id)
        res = self.measure(ctx, image_id)
        bank = res.bank
        img = ctx.images.get(image_id)
        amap = res.anomaly_map
        find = self._inner(amap, img.width, res.grid_shape)  # regions, like the image score, skip the border ring
        above = float(find.max()) >= bank.edge
        if above:
            # half-way from the map's median to its peak, never below the edge: tight boxes
            med = float(np.median(find))
            thr = max(bank.edge, med + 0.5 * (float(find.max()) - med))
            label = "above normal range" if res.raw_score >= bank.edge else "local peak (image within normal range)"
            regions = top_regions(find, k=args.top_k_regions, threshold=thr, label=label)
        else:
            regions = top_regions(find, k=1, rel_threshold=0.5, label="map peak (within normal range)")
        safe_id = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in image_id)
        # one display scale per reference bank (category), from its calibration; raw floats go to .npy
        map_path = write_map_png(amap, Path(ctx.out_dir) / f"{self.name}_{safe_id}.png", vmin=bank.typical_patch,
                                 vmax=bank.typical_patch + 2.0 * (bank.edge - bank.typical_patch))
        assert self.backbone is not None
        lo, hi = min(bank.normal_scores), max(bank.normal_scores)
        hard = self.without_hard_normals(ctx, image_id)
        summary = self._summary(res, regions, above, img.width, img.height, lo, hi, hard)
        return PatchKnnOutput(
            score=float(res.score),  # unrounded: rounding makes strong anomalies tie (AUROC needs the order)
            raw_score=float(res.raw_score),
            normal_ratio=_ratio(res.raw_score, bank.calibrator.center),
            log_odds=bank.calibrator.log_odds(res.raw_score),
            regions=regions,
            summary=summary,
            map_path=map_path,
            image_id=image_id,
            backbone=self.backbone.model_id,
            n_references=bank.n_refs,
            calibration=bank.calibration,
            normal_range=(round(lo, 4), round(hi, 4)),
            reference_scores=[float(v) for v in bank.normal_scores],
            edge_of_normal=round(bank.edge, 4),
            choices=list(bank.choices),
            known_defect=res.known_defect(),
            hard_normals=hard,
        ).with_map(amap)

    def _summary(self, res: PatchKnnResult, regions, above: bool, w: int, h: int, lo: float, hi: float,
                 hard: HardNormals | None = None) -> str:
        bank = res.bank
        units = ("nearest-patch distance" if len(bank.views) == 1
                 else "nearest-patch distance relative to the references' own, views averaged")
        if res.raw_score > hi:
            rel = f"above the references' range {lo:.3f} to {hi:.3f}"
        elif res.raw_score < lo:
            rel = f"below the references' range {lo:.3f} to {hi:.3f}"
        else:
            rel = f"within the references' range {lo:.3f} to {hi:.3f}"
        text = (
            f"{self.name} compared each patch with {bank.n_refs} normal reference(s) "
            f"(calibrated by {bank.calibration}): anomaly score {res.score:.2f} "
            f"(raw {units} {res.raw_score:.3f}, {rel}; 0.5 is reached at "
            f"{bank.edge:.3f})."
        )
        if regions:
            top = regions[0]
            where = _position_words(top.bbox_xyxy, w, h)
            if above and res.raw_score >= bank.edge:
                more = f" {len(regions) - 1} further region(s) also exceed it." if len(regions) > 1 else ""
                text += (
                    f" The most anomalous region is at the {where} of the {w}x{h} image, box "
                    f"{list(top.bbox_xyxy)} (peak {top.score:.3f}, beyond the normal edge).{more}"
                )
            elif above:  # one spot passes the edge, the image score (top 1% of patches) does not
                text += (
                    f" Locally, the map peaks at the {where} of the {w}x{h} image, box {list(top.bbox_xyxy)} "
                    f"(peak {top.score:.3f} passes the edge at that spot, but the image score stays below it)."
                )
            else:
                text += (
                    f" No area exceeds the normal edge; the strongest response is at the {where}, "
                    f"box {list(top.bbox_xyxy)} (peak {top.score:.3f})."
                )
        known = res.known_defect()
        if known is not None:
            text += (
                f" Its strongest patch resembles the known defect {known.example}: {known.ratio:.1f}x nearer to "
                f"that defect's patches than to any normal patch, which raised the raw score from "
                f"{res.plain_raw:.3f} to {res.raw_score:.3f}."
            )
        if hard is not None:
            text += (f" Without the {hard.n} reference(s) the inspector marked as false alarms it would score "
                     f"{hard.score_without:.2f} (raw {hard.raw_without:.3f}).")
        if bank.choices:
            text += " Chosen for these references: " + "; ".join(bank.choices) + "."
        return text


def calibrate_edge(normal: list[float], how: str, factor: float | None = None) -> Calibrator:
    """The calibrator whose edge of normal (0.5) is `factor` times the median of the references' own scores
    `normal`; `factor` None: EDGE_LOO for `how` "leave-one-out", else EDGE_SINGLE."""
    if factor is None:
        factor = EDGE_LOO if how == "leave-one-out" else EDGE_SINGLE
    rel = (factor - 1.0) / Z_EDGE
    return Calibrator.fit(normal, min_rel_spread=rel, max_rel_spread=rel)


FINE_CONFIG = dataclasses.replace(PatchKnnConfig(), pool=1)


@register
class PatchKnnFine(PatchKnn):
    """patch_knn on unpooled features (`pool=1`): the second scale of the survey's reading.

    The 3x3 pooling of patch_knn averages away defects a few pixels across; unpooled features keep them but
    respond more to normal detail. Alone it is not better than patch_knn on categories it was not chosen on;
    the survey adds the two raw scores (`agent.survey_fusion`). It shares patch_knn's backbone pass.
    """

    name = "patch_knn_fine"
    description = (
        "patch_knn on unpooled features (finer detail: defects a few pixels across): calibrated anomaly score, "
        "anomaly map and regions against the normal references. Needs at least one normal reference."
    )

    def __init__(self, config: PatchKnnConfig | None = None) -> None:
        super().__init__(config or FINE_CONFIG)


def check_config(cfg: PatchKnnConfig) -> PatchKnnConfig:
    """Validate a config's enumerated fields; raises `ToolError` naming the valid choices."""
    if cfg.augment not in AUGMENTS:
        msg = f"augment must be one of {', '.join(AUGMENTS)}, got {cfg.augment!r}"
        raise ToolError(msg)
    for view in view_specs(cfg):
        if not set(view) <= {"patch", "image", "none", "pos"} or len(set(view)) != len(view) or view == ("pos",):
            msg = (f"layer_norm must be views separated by ',', each 'patch', 'image', 'pos', 'none' or several "
                   f"joined by '+' (e.g. 'image+pos,patch+image'), got {cfg.layer_norm!r}")
            raise ToolError(msg)
    if cfg.grey_norm not in GREY_NORMS:
        msg = f"grey_norm must be one of {', '.join(GREY_NORMS)}, got {cfg.grey_norm!r}"
        raise ToolError(msg)
    if cfg.scale_mode not in ("area", "refs", "fit"):
        msg = f"scale_mode must be 'area', 'refs' or 'fit', got {cfg.scale_mode!r}"
        raise ToolError(msg)
    return cfg
