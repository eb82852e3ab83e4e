"""`parts_check`: logical anomalies - parts that are missing, extra, moved, resized or recoloured.

Segmentation (at a working resolution, longer side `work_side`):
- with a SAM checkpoint: `SamAutomaticMaskGenerator` masks, minus background-sized ones and masks
  that contain other masks; each part gets the colour group of its mean colour;
- otherwise: a colour palette (k-means in LAB) fitted on the references' pixels; clusters that
  cover much of the image border are background; parts are connected components of the other
  clusters (after a small opening), at least `min_area` of the image.

Comparison: parts are matched to each reference's parts by position (Hungarian assignment, gated).
Cost against one reference = missing + extra parts + for matched pairs the excess of the colour
difference (LAB dE), the area ratio (|log|) and the shift over tolerances learned from the references
themselves (pairs of references; augmented copies when k = 1), each excess capped at one part.
Raw score = the cost against the best-matching reference, calibrated on the references' own
leave-one-out costs (spread floored at a quarter part).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import Field

from tools.base import Tool, ToolContext, ToolInput, ToolOutput
from tools.calibration import Calibrator, augmented_copies, ratio_to_normal
from tools.registry import register
from tools.types import Region

POS_FLOOR = 0.03  # shift tolerance floor, fraction of the image diagonal
COLOUR_FLOOR = 12.0  # LAB dE tolerance floor
AREA_FLOOR = 0.25  # |log area ratio| tolerance floor (about +-28%)
MATCH_RADIUS = 0.12  # parts further apart than this (diagonal fraction) never match
MIN_SPREAD = 0.25  # calibration spread floor, in parts
MAX_PARTS = 60
MERGE_DE = 20.0  # palette centres closer than this (LAB dE) are one colour group
NOVEL_DE = 30.0  # pixels further than this (LAB dE) from every reference colour form a "novel" group


@dataclass
class Part:
    """One segmented part. Coordinates are normalised to [0, 1] of the image's width / height.

    Attributes:
        group: colour-group index (palette cluster).
        centroid: (x, y) normalised.
        area: fraction of the image area.
        lab: mean LAB colour (OpenCV 8-bit LAB scaled to L 0..100, a/b -128..127).
        box: xyxy normalised.
    """

    group: int
    centroid: tuple[float, float]
    area: float
    lab: np.ndarray
    box: tuple[float, float, float, float]


@dataclass
class Palette:
    """LAB cluster centres (Kx3), which of them are background, and a display name per group."""

    centres: np.ndarray
    background: set[int]
    names: list[str]

    @property
    def novel(self) -> int:
        """Group index of colours no reference shows (further than NOVEL_DE from every centre)."""
        return len(self.centres)

    def assign(self, lab: np.ndarray) -> np.ndarray:
        """Nearest centre per LAB row (Nx3) -> N ints; `novel` where no centre is within NOVEL_DE."""
        d = ((lab[:, None, :] - self.centres[None]) ** 2).sum(-1)
        groups = d.argmin(axis=1)
        groups[np.sqrt(d.min(axis=1)) > NOVEL_DE] = self.novel
        return groups

    def name(self, part: Part) -> str:
        """Display name of a part's colour group (its own colour word when novel)."""
        if part.group == self.novel:
            return f"{colour_name(part.lab)} (a colour no reference shows)"
        return self.names[part.group]


def _lab(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxWx3 float32 LAB (L 0..100, a/b around 0)."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 0] *= 100.0 / 255.0
    lab[..., 1:] -= 128.0
    return lab


def colour_name(lab: np.ndarray) -> str:
    """A basic colour word for a LAB colour (white, grey, black, red, orange, ... pink)."""
    pix = np.array([[[lab[0] * 255.0 / 100.0, lab[1] + 128.0, lab[2] + 128.0]]], np.float32)
    rgb = cv2.cvtColor(np.clip(pix, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    h, s, v = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[0, 0].astype(float)
    if s < 45 or v < 40:
        return "black" if v < 60 else ("white" if v > 200 and s < 30 else "grey")
    hue = h * 2.0
    for limit, name in ((15, "red"), (40, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"),
                        (260, "blue"), (290, "purple"), (335, "pink"), (361, "red")):
        if hue < limit:
            return name
    return "red"


def _drop_blends(centres: np.ndarray, weights: np.ndarray, max_de: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Drop centres that are mixtures of two heavier centres (anti-aliased edges between parts).

    A centre is a blend when it lies within `max_de` of the segment between two centres that each
    hold more pixels, strictly between them (10%..90% of the way).
    """
    drop = set()
    for i, c in enumerate(centres):
        heavier = [j for j in range(len(centres)) if j != i and weights[j] > weights[i]]
        for a in heavier:
            for b in heavier:
                if b <= a:
                    continue
                ab = centres[b] - centres[a]
                t = float((c - centres[a]) @ ab / max(float(ab @ ab), 1e-9))
                if 0.1 < t < 0.9 and np.linalg.norm(centres[a] + t * ab - c) < max_de:
                    drop.add(i)
    keep = [i for i in range(len(centres)) if i not in drop]
    return centres[keep], weights[keep]


def _merge_centres(centres: np.ndarray, weights: np.ndarray, min_de: float) -> np.ndarray:
    """Merge the closest pair of centres (weighted mean) until all pairs are >= min_de apart."""
    centres, weights = list(centres), list(weights)
    while len(centres) > 1:
        c = np.array(centres)
        d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)) + np.eye(len(c)) * 1e9
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        if d[i, j] >= min_de:
            break
        w = weights[i] + weights[j]
        centres[i] = (centres[i] * weights[i] + centres[j] * weights[j]) / w
        weights[i] = w
        del centres[j], weights[j]
    order = np.argsort([-float(x[0]) for x in centres])
    return np.array(centres)[order]


def fit_palette(images: list[np.ndarray], n_colours: int, seed: int = 0) -> Palette:
    """k-means LAB palette over the references' pixels; centres closer than MERGE_DE merged."""
    rng = np.random.default_rng(seed)
    samples, border = [], []
    for rgb in images:
        lab = _lab(cv2.GaussianBlur(rgb, (3, 3), 0)).reshape(-1, 3)
        take = rng.choice(len(lab), size=min(len(lab), 20000 // max(1, len(images))), replace=False)
        samples.append(lab[take])
    data = np.concatenate(samples).astype(np.float32)
    k = int(min(n_colours, len(np.unique(data.round(), axis=0))))
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_MAX_ITER, 30, 0.5)
    _, labels, centres = cv2.kmeans(data, max(1, k), None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    weights = np.bincount(labels.ravel(), minlength=len(centres)).astype(np.float64)
    keep = weights >= max(1.0, 0.001 * len(data))  # in-between colours of edges: too rare to be a group
    centres, weights = _drop_blends(centres[keep].astype(np.float64), weights[keep])
    merged = _merge_centres(centres, weights, MERGE_DE)
    palette = Palette(merged.astype(np.float32), set(), [])
    # background: groups covering a quarter of the border pixels, else the largest group
    for rgb in images:
        lab = _lab(cv2.GaussianBlur(rgb, (3, 3), 0))
        edge = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
        border.append(np.bincount(palette.assign(edge), minlength=len(merged) + 1)[: len(merged)] / len(edge))
    share = np.mean(border, axis=0)
    palette.background = {int(i) for i in np.nonzero(share >= 0.25)[0]} or {int(share.argmax())}
    names = [colour_name(c) for c in palette.centres]
    palette.names = [n if names.count(n) == 1 else f"{n} ({names[: i + 1].count(n)})" for i, n in enumerate(names)]
    return palette


def parts_by_colour(rgb: np.ndarray, palette: Palette, min_area: float) -> list[Part]:
    """Connected components of the non-background colour groups (HxWx3 uint8 input)."""
    h, w = rgb.shape[:2]
    lab = _lab(cv2.GaussianBlur(rgb, (3, 3), 0))
    groups = palette.assign(lab.reshape(-1, 3)).reshape(h, w)
    kernel = np.ones((3, 3), np.uint8)
    parts = []
    for g in range(len(palette.centres) + 1):
        if g in palette.background:
            continue
        mask = cv2.morphologyEx((groups == g).astype(np.uint8), cv2.MORPH_OPEN, kernel)
        n, labels, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for i in range(1, n):
            area = stats[i, cv2.CC_STAT_AREA] / (h * w)
            if area < min_area:
                continue
            x, y, bw, bh = (int(v) for v in stats[i, :4])
            parts.append(Part(
                g, (float(cents[i, 0] / w), float(cents[i, 1] / h)), float(area),
                lab[labels == i].mean(axis=0), (x / w, y / h, (x + bw) / w, (y + bh) / h),
            ))
    parts.sort(key=lambda p: -p.area)
    return parts[:MAX_PARTS]


def parts_by_sam(rgb: np.ndarray, sam, palette: Palette, min_area: float) -> list[Part]:
    """Parts from SAM automatic masks: drop background-sized and enclosing masks; colour by palette."""
    from segment_anything import SamAutomaticMaskGenerator

    h, w = rgb.shape[:2]
    gen = SamAutomaticMaskGenerator(sam, points_per_side=16, pred_iou_thresh=0.8, stability_score_thresh=0.85)
    masks = [m["segmentation"].astype(bool) for m in gen.generate(rgb)]
    masks = [m for m in masks if min_area <= m.mean() <= 0.3]
    keep = []
    for i, m in enumerate(masks):  # a mask that covers most of another one is a group, not a part
        if not any(j != i and (m & o).sum() >= 0.9 * o.sum() and m.sum() > o.sum() for j, o in enumerate(masks)):
            keep.append(m)
    lab = _lab(rgb)
    parts = []
    for m in keep:
        ys, xs = np.nonzero(m)
        colour = lab[m].mean(axis=0)
        parts.append(Part(
            int(palette.assign(colour[None])[0]), (float(xs.mean() / w), float(ys.mean() / h)),
            float(m.mean()), colour, (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h),
        ))
    parts.sort(key=lambda p: -p.area)
    return parts[:MAX_PARTS]


@dataclass
class Tolerances:
    pos: float = POS_FLOOR
    colour: float = COLOUR_FLOOR
    area: float = AREA_FLOOR


@dataclass
class Comparison:
    """Parts of a query compared with one reference's parts."""

    cost: float
    missing: list[Part]
    extra: list[Part]
    changed: list[tuple[Part, Part, str, float]]  # (query part, reference part, what, excess)
    pairs: list[tuple[Part, Part]]


def _pos_dist(a: Part, b: Part) -> float:
    return float(np.hypot(a.centroid[0] - b.centroid[0], a.centroid[1] - b.centroid[1]) / np.sqrt(2.0))


def compare(query: list[Part], ref: list[Part], tol: Tolerances) -> Comparison:
    """Match parts by position and price the differences (see the module docstring)."""
    from scipy.optimize import linear_sum_assignment

    pairs: list[tuple[Part, Part]] = []
    if query and ref:
        cost = np.array([[_pos_dist(q, r) for r in ref] for q in query])
        rows, cols = linear_sum_assignment(np.where(cost <= MATCH_RADIUS, cost, 1e3))
        pairs = [(query[i], ref[j]) for i, j in zip(rows, cols, strict=True) if cost[i, j] <= MATCH_RADIUS]
    matched_q = {id(q) for q, _ in pairs}
    matched_r = {id(r) for _, r in pairs}
    missing = [r for r in ref if id(r) not in matched_r]
    extra = [q for q in query if id(q) not in matched_q]
    changed = []
    for q, r in pairs:
        checks = (
            ("colour", float(np.linalg.norm(q.lab - r.lab)) / tol.colour),
            ("size", abs(float(np.log(q.area / r.area))) / tol.area),
            ("position", _pos_dist(q, r) / tol.pos),
        )
        for what, ratio in checks:
            if ratio > 1.0:
                changed.append((q, r, what, min(1.0, ratio - 1.0)))
    total = len(missing) + len(extra) + sum(c[3] for c in changed)
    return Comparison(float(total), missing, extra, changed, pairs)


def learn_tolerances(ref_parts: list[list[Part]]) -> Tolerances:
    """Tolerances = 1.5 x the largest matched-pair difference among the references (with floors)."""
    pos, col, area = [0.0], [0.0], [0.0]
    for i, a in enumerate(ref_parts):
        for b in ref_parts[i + 1 :]:
            for q, r in compare(a, b, Tolerances(1e9, 1e9, 1e9)).pairs:
                pos.append(_pos_dist(q, r))
                col.append(float(np.linalg.norm(q.lab - r.lab)))
                area.append(abs(float(np.log(q.area / r.area))))
    return Tolerances(max(POS_FLOOR, 1.5 * max(pos)), max(COLOUR_FLOOR, 1.5 * max(col)), max(AREA_FLOOR, 1.5 * max(area)))


def _box_words(box: tuple[int, int, int, int]) -> str:
    return f"[{box[0]}, {box[1]}, {box[2]}, {box[3]}]"


@register
class PartsCheck(Tool):
    name = "parts_check"
    description = (
        "Logical check: segments the parts (SAM masks, or colour clusters) and compares their count, "
        "colours, sizes and positions with the normal references. Reports each deviation in words "
        "('3 blue parts; every reference has 4') with regions and a calibrated score. Needs references."
    )

    class Input(ToolInput):
        image_id: str | None = Field(None, description="image to check; default: the query")
        n_colours: int = Field(6, ge=2, le=12, description="colour groups of the palette")
        min_area: float = Field(0.002, gt=0.0, lt=0.5, description="smallest part, fraction of the image")
        work_side: int = Field(256, ge=64, le=1024, description="working resolution, longer side, px")
        use_sam: bool = Field(True, description="use SAM automatic masks when a checkpoint is configured")

    class Output(ToolOutput):
        segmentation: str
        n_parts: int
        counts_by_colour: dict[str, int]
        reference_counts: dict[str, list[int]]
        deviations: list[str]
        best_reference_id: str

    def _setup(self, ctx: ToolContext) -> None:
        from tools.sam_models import load_sam

        self.sam, self.no_sam_reason = load_sam(ctx.settings)

    def _work(self, ctx: ToolContext, image_id: str, side: int) -> np.ndarray:
        img = ctx.images.get(image_id)
        s = min(1.0, side / max(img.height, img.width))
        size = (max(8, round(img.width * s)), max(8, round(img.height * s)))
        return cv2.resize(img.pixels, size, interpolation=cv2.INTER_AREA) if s < 1 else img.pixels

    def _parts(self, ctx, pixels, digest, palette_key, palette, args, use_sam) -> list[Part]:
        # the palette's key names the references' digests; hashed, so a query's parts stay in the run's own
        # cache (released when the run ends) and only the references' parts go to the shared one
        palette_tag = hashlib.sha1(repr(palette_key).encode()).hexdigest()[:16]
        key = ("parts", digest, palette_tag, args.min_area, args.work_side, use_sam)
        if key not in ctx.cache:
            if use_sam:
                ctx.cache[key] = parts_by_sam(pixels, self.sam, palette, args.min_area)
            else:
                ctx.cache[key] = parts_by_colour(pixels, palette, args.min_area)
        return ctx.cache[key]

    def _run(self, args: Input, ctx: ToolContext) -> Output:
        image_id = ctx.require_image(args.image_id)
        refs = [r for r in ctx.require_references(self.name) if r != image_id]
        use_sam = bool(args.use_sam and self.sam is not None)
        ref_px = [self._work(ctx, r, args.work_side) for r in refs]
        digests = tuple(ctx.images.get(r).digest for r in refs)
        pal_key = ("parts_palette", digests, args.n_colours, args.work_side)
        if pal_key not in ctx.cache:
            ctx.cache[pal_key] = fit_palette(ref_px, args.n_colours)
        palette = ctx.cache[pal_key]
        ref_parts = [
            self._parts(ctx, px, ctx.images.get(r).digest, pal_key, palette, args, use_sam)
            for r, px in zip(refs, ref_px, strict=True)
        ]
        cal_key = ("parts_calibration", pal_key, args.min_area, use_sam)
        if cal_key not in ctx.cache:
            if len(refs) >= 2:
                tol = learn_tolerances(ref_parts)
                loo = [min(compare(p, o, tol).cost for j, o in enumerate(ref_parts) if j != i)
                       for i, p in enumerate(ref_parts)]
            else:
                copies = [self._parts(ctx, c, f"aug{i}-{digests[0]}", pal_key, palette, args, use_sam)
                          for i, c in enumerate(augmented_copies(ref_px[0], n=2))]
                tol = learn_tolerances([ref_parts[0], *copies])
                loo = [compare(c, ref_parts[0], tol).cost for c in copies]
            fitted = Calibrator.fit(loo)
            ctx.cache[cal_key] = (tol, Calibrator(fitted.center, max(fitted.spread, MIN_SPREAD), fitted.n))
        tol, cal = ctx.cache[cal_key]

        img = ctx.images.get(image_id)
        q_parts = self._parts(ctx, self._work(ctx, image_id, args.work_side), img.digest, pal_key, palette, args, use_sam)
        comps = [compare(q_parts, rp, tol) for rp in ref_parts]
        best = int(np.argmin([c.cost for c in comps]))
        comp = comps[best]
        raw = comp.cost
        score = cal(raw)

        def root_box(box_norm) -> tuple[int, int, int, int]:
            x0, y0, x1, y1 = box_norm
            return ctx.images.to_root(image_id, (x0 * img.width, y0 * img.height, x1 * img.width, y1 * img.height))[1]

        deviations: list[str] = []
        regions: list[Region] = []
        counts = self._counts(q_parts, palette)
        ref_counts = {name: [self._counts(rp, palette).get(name, 0) for rp in ref_parts] for name in self._group_names(palette)}
        for name, rc in ref_counts.items():
            qc = counts.get(name, 0)
            if qc < min(rc) or qc > max(rc):
                every = f"every reference has {rc[0]}" if min(rc) == max(rc) else f"the references have {min(rc)}-{max(rc)}"
                deviations.append(f"{qc} {name} part{'s' if qc != 1 else ''}; {every}")
        for r in comp.missing:
            box = root_box(r.box)
            deviations.append(f"missing {palette.name(r)} part near {_box_words(box)} (present in {refs[best]!r})")
            regions.append(Region(bbox_xyxy=box, score=1.0, label=f"missing {palette.name(r)} part"))
        for q in comp.extra:
            box = root_box(q.box)
            deviations.append(f"extra {palette.name(q)} part at {_box_words(box)}")
            regions.append(Region(bbox_xyxy=box, score=1.0, label=f"extra {palette.name(q)} part"))
        for q, r, what, excess in comp.changed:
            box = root_box(q.box)
            if what == "colour":
                text = (f"part at {_box_words(box)} is {colour_name(q.lab)} where {refs[best]!r} has "
                        f"{colour_name(r.lab)} (dE {np.linalg.norm(q.lab - r.lab):.0f}, tolerance {tol.colour:.0f})")
            elif what == "size":
                text = (f"{palette.name(q)} part at {_box_words(box)} has {q.area / r.area:.2f}x the area of "
                        f"its counterpart (tolerance x{np.exp(-tol.area):.2f}-{np.exp(tol.area):.2f})")
            else:
                text = (f"{palette.name(q)} part at {_box_words(box)} moved by "
                        f"{_pos_dist(q, r):.3f} of the diagonal (tolerance {tol.pos:.3f})")
            deviations.append(text)
            regions.append(Region(bbox_xyxy=box, score=excess, label=f"{what} differs"))
        regions.sort(key=lambda r: -(r.score or 0.0))

        seg = "SAM automatic masks" if use_sam else "colour clusters"
        seg_note = " (no SAM checkpoint)" if not use_sam and args.use_sam else ""
        listing = ", ".join(f"{n} {c}" for c, n in sorted(((c, n) for n, c in counts.items()), reverse=True)) or "none"
        how = "leave-one-out over" if len(refs) >= 2 else "augmented copies of"
        found = (
            " ".join(f"({i}) {d};" for i, d in enumerate(deviations, 1)).rstrip(";")
            if deviations else "no deviation beyond what the references show"
        )
        summary = (
            f"Parts by {seg}{seg_note}: {len(q_parts)} parts in {image_id!r} ({listing}). Against the "
            f"best-matching reference {refs[best]!r}: {found}. Mismatch {raw:.2f} parts vs "
            f"{cal.center:.2f} +- {cal.spread:.2f} among references ({how} {len(refs)}) -> calibrated {score:.2f}."
        )
        return self.Output(
            score=score, raw_score=raw, normal_ratio=ratio_to_normal(raw, cal.center),
            log_odds=cal.log_odds(raw), regions=regions, summary=summary, segmentation=seg,
            n_parts=len(q_parts), counts_by_colour=counts, reference_counts=ref_counts,
            deviations=deviations, best_reference_id=refs[best],
        )

    @staticmethod
    def _group_names(palette: Palette) -> list[str]:
        return [palette.names[g] for g in range(len(palette.centres)) if g not in palette.background]

    @staticmethod
    def _counts(parts: list[Part], palette: Palette) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in parts:
            out[palette.name(p)] = out.get(palette.name(p), 0) + 1
        return out
