"""Known defects as evidence: a bank of the patches of labelled anomalous examples that lie far from normal.

An inspector's labelled anomalies (feedback on a missed defect, `memory add --label anomalous`, imports)
carry what a defect of this product looks like. Matching a query against whole defective images would
overfit to them (a normal patch of a defective image is still normal), so only the example's patches
that the normal bank itself finds farthest from normal are kept: the cells whose patch score is beyond the
references' edge of normal, and always the example's own top `top_fraction` of cells (the ones that make its
image score: a missed defect, the usual feedback, has few or no cells beyond the edge, and would otherwise
teach nothing); at most `MAX_PATCHES` per example, strongest first. Chosen on the realsets dev feedback stream
(2026-12-04): the top cells took kolektorsdd's error ratio from 0.43x to 0.24x and changed no category for the
worse.

A query patch that lies nearer to a known-defect patch than to any normal patch has its patch score
multiplied by that ratio (d_normal / d_defect, > 1), per view, the views averaged as in `patch_knn`.
Nothing else changes: a patch nearer to normal keeps its score, so the score never falls, and the
references' calibration (their leave-one-out scores) is untouched. `Boost.example` names the example the
strongest boosted patch resembles, for the explanation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_PATCHES = 64  # per example and view


@dataclass
class DefectBank:
    """Per view, a faiss index over known-defect patch vectors and, per row, which example it came from.

    Attributes:
        indexes: per view, a flat L2 index (None without examples).
        owners: per view, (n,) int: the example each indexed row belongs to.
        names: the examples' names, as the explanation cites them.
        kept: patches kept per example (its top cells, and every cell beyond the edge of normal, up to MAX_PATCHES).
    """

    indexes: list
    owners: list[np.ndarray]
    names: list[str]
    kept: list[int]

    @property
    def empty(self) -> bool:
        return all(i is None for i in self.indexes)


@dataclass
class Boost:
    """What the known defects did to one query: the boosted grid and the strongest resemblance.

    Attributes:
        grid: gh x gw float32 patch scores after the boost (>= the plain ones).
        ratio: the largest d_normal / d_defect at the image's strongest boosted patch (1.0: none).
        example: name of the example that patch resembles, or None.
        cell: (row, col) of that patch in the grid, or None.
    """

    grid: np.ndarray
    ratio: float
    example: str | None
    cell: tuple[int, int] | None


def top_cells(shape: tuple[int, int], scores: np.ndarray, fraction: float, border: int) -> np.ndarray:
    """Flat indices of the highest `fraction` (at least one) of a gh x gw grid's flattened `scores`, the
    `border` ring left out as `tools.patch_knn.image_score` leaves it out."""
    from tools.patch_knn import inner_cells

    inner = np.zeros(shape, bool)
    inner[inner_cells(shape, border)] = True
    candidates = np.flatnonzero(inner.ravel())
    n = max(1, int(round(fraction * candidates.size)))
    return candidates[np.argsort(-scores[candidates])[:n]]


def build(bank, example_feats: list[list[np.ndarray]], names: list[str], top_fraction: float = 0.01,
          border: int = 0) -> DefectBank:
    """The defect bank of labelled anomalous examples against a normal `ReferenceBank`.

    Args:
        bank: patch_knn's `ReferenceBank` of the normal references.
        example_feats: per example, its per-view gh x gw x C features (as `PatchKnn._features` gives them).
        names: per example, the name to cite.
        top_fraction: each example's highest-scoring fraction of cells is kept even below the edge (at
            least one cell; patch_knn passes its `topk`).
        border: cells along each edge left out of those top cells, as the image score leaves them out.
    """
    from tools.patch_knn import _flat_index, combine_grids, nn_distance

    vectors = bank.vectors
    per_view: list[list[np.ndarray]] = [[] for _ in bank.views]
    owners: list[list[np.ndarray]] = [[] for _ in bank.views]
    kept = []
    for e, feats in enumerate(example_feats):
        vecs = vectors(feats)
        grids = [nn_distance(index, f) for index, f in zip(bank.indexes, vecs, strict=True)]
        combined = combine_grids(grids, bank.scales).ravel()
        top = top_cells(grids[0].shape, combined, top_fraction, border)
        cells = np.union1d(np.flatnonzero(combined >= bank.edge), top)
        cells = cells[np.argsort(-combined[cells])][:MAX_PATCHES]
        kept.append(int(cells.size))
        for v, f in enumerate(vecs):
            if cells.size:
                per_view[v].append(f.reshape(-1, f.shape[-1])[cells])
                owners[v].append(np.full(cells.size, e, np.int64))
    indexes = [_flat_index(np.concatenate(rows)) if rows else None for rows in per_view]
    return DefectBank(indexes, [np.concatenate(o) if o else np.zeros(0, np.int64) for o in owners], names, kept)


def boost(bank, defects: DefectBank, feats: list[np.ndarray], grid: np.ndarray) -> Boost:
    """Raise the query's patch scores where a patch is nearer to a known defect than to any normal patch.

    Args:
        bank: the normal `ReferenceBank`.
        defects: `build`'s result for the same bank.
        feats: the query's per-view features.
        grid: its plain gh x gw patch-score grid (`ReferenceBank.grid`).
    """
    from tools.patch_knn import _padded, nn_distance

    if defects.empty:
        return Boost(grid, 1.0, None, None)
    vecs = bank.vectors(feats)
    ratios = []
    nearest_owner = None
    for v, (index, f) in enumerate(zip(bank.indexes, vecs, strict=True)):
        d_normal = nn_distance(index, f)
        dindex = defects.indexes[v]
        if dindex is None:
            ratios.append(np.ones_like(d_normal))
            continue
        gh, gw, c = f.shape
        dist, rows = dindex.search(_padded(f.reshape(-1, c), dindex.d), 1)
        d_defect = np.sqrt(np.maximum(dist[:, 0], 0.0)).reshape(gh, gw).astype(np.float32)
        ratios.append(np.maximum(1.0, d_normal / np.maximum(d_defect, 1e-6)))
        if nearest_owner is None:
            nearest_owner = defects.owners[v][rows[:, 0]].reshape(gh, gw)
    ratio = np.mean(ratios, axis=0).astype(np.float32)
    boosted = (grid * ratio).astype(np.float32)
    gain = boosted - grid
    if float(gain.max()) <= 0:
        return Boost(grid, 1.0, None, None)
    r, c = np.unravel_index(int(np.argmax(boosted * (ratio > 1.0))), grid.shape)
    example = defects.names[int(nearest_owner[r, c])] if nearest_owner is not None else None
    return Boost(boosted, float(ratio[r, c]), example, (int(r), int(c)))
