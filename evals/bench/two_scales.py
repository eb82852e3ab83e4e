"""Two scales of patch_knn, leave category out: the committed default (3x3 pooled features) beside the
same tool on unpooled features (`pool=1`), and fusions of the two, chosen per category on the *other*
categories' dev folds and measured on its test fold (the README's "Pooling" paragraph).

    python -m evals.bench.two_scales                       # collect both folds (minutes), then the table
    python -m evals.bench.two_scales DEV.jsonl TEST.jsonl  # the table from earlier collections

The candidate grid, declared before the first run (2026-12-04): patch_knn alone; `pool=1` alone; the sum of
the two raw scores (each is "relative to the references' own", so they add like for like); the larger of
the two scores divided by their edges of normal, the unpooled edge scaled by 0.6, 0.8 or 1; a one-sided `add`
like the survey's (patch_knn's log-odds plus w times the unpooled log-odds beyond its edge, on the calibrated
scores, w = 0.25, 0.5, 1) and a `max` of the two log-odds (w = 0.5, 1). Scores come from
`evals.survey_scores` (the same draws and images).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from collections import defaultdict
from functools import cache, partial
from pathlib import Path

import numpy as np

from agent.fusion import _logit
from evals.bench.lco_protocol import _auroc, load

FINE = "fine"


def configs() -> dict:
    """The two scales collected: name -> PatchKnnConfig."""
    from tools.patch_knn import PatchKnnConfig

    return {"patch_knn": PatchKnnConfig(), FINE: dataclasses.replace(PatchKnnConfig(), pool=1)}


def _edge(row: dict, tool: str) -> float:
    """The tool's edge of normal (raw score at calibrated 0.5) for the row's reference set."""
    return _edge_of(tuple(row["_set"][f"{tool}:normal"]), row["k"] >= 2)


@cache
def _edge_of(normal: tuple[float, ...], leave_one_out: bool) -> float:
    """patch_knn's edge for these reference scores (one fit per reference set, not per image and rule)."""
    from tools.patch_knn import PatchKnn

    return PatchKnn._calibrate(list(normal), "leave-one-out" if leave_one_out else "augmented copies").edge


def _max_rel(row: dict, g: float) -> float:
    return max(row["patch_knn"][0] / _edge(row, "patch_knn"), row[FINE][0] / (g * _edge(row, FINE)))


def _add(row: dict, w: float) -> float:
    return _logit(row["patch_knn"][1]) + w * max(0.0, _logit(row[FINE][1]))


def _max(row: dict, w: float) -> float:
    return max(_logit(row["patch_knn"][1]), w * _logit(row[FINE][1]))


def _candidates() -> dict:
    """name -> function of one image row (a monotone fused score)."""
    out = {"patch_knn": lambda r: r["patch_knn"][0], FINE: lambda r: r[FINE][0],
           "sum": lambda r: r["patch_knn"][0] + r[FINE][0]}
    out.update({f"max_rel({g:g})": partial(_max_rel, g=g) for g in (0.6, 0.8, 1.0)})
    out.update({f"add({w:g})": partial(_add, w=w) for w in (0.25, 0.5, 1.0)})
    out.update({f"max({w:g})": partial(_max, w=w) for w in (0.5, 1.0)})
    return out


CANDIDATES = _candidates()


def table(images: dict) -> dict:
    """{(candidate, category, k): image AUROC, mean over draws}."""
    per: dict = defaultdict(list)
    for (cat, k, _d), rows in images.items():
        labels = [r["label"] for r in rows]
        for name, score in CANDIDATES.items():
            a = _auroc(labels, [score(r) for r in rows])
            if a is not None:
                per[(name, cat, k)].append(a)
    return {key: float(np.mean(v)) for key, v in per.items()}


def choose(dev: dict, cats: list[str], ks, exclude: str) -> str:
    """The candidate with the best mean dev AUROC over the categories other than `exclude` (all k)."""
    def score(name: str) -> float:
        return float(np.mean([dev[(name, c, k)] for c in cats if c != exclude for k in ks if (name, c, k) in dev]))
    return max(CANDIDATES, key=score)


def report(dev: dict, test: dict, cats: list[str], ks) -> list[str]:
    """Markdown lines: each held-out category's pick and its test AUROC beside patch_knn's, then the
    leave-category-out mean and worst drop per k, then every candidate's mean on each fold."""
    lines = ["| held-out category | chosen on the others' dev | " + " | ".join(f"test k={k}: chosen / patch_knn"
                                                                              for k in ks) + " |",
             "|---|---|" + "---|" * len(ks)]
    picks = {c: choose(dev, cats, ks, c) for c in cats}
    for c in cats:
        cells = [f"{test[(picks[c], c, k)]:.3f} / {test[('patch_knn', c, k)]:.3f}" for k in ks]
        lines.append(f"| {c} | {picks[c]} | " + " | ".join(cells) + " |")
    for k in ks:
        d = {c: test[(picks[c], c, k)] - test[("patch_knn", c, k)] for c in cats}
        worst = min(d, key=d.get)
        lines.append(f"k={k}: leave-category-out {statistics.mean(test[(picks[c], c, k)] for c in cats):.3f} against "
                     f"patch_knn {statistics.mean(test[('patch_knn', c, k)] for c in cats):.3f} "
                     f"(worst {worst} {d[worst]:+.3f})")
    lines.append("")
    lines.append("| candidate | " + " | ".join(f"{fold} k={k}" for fold in ("dev", "test") for k in ks) + " |")
    lines.append("|---|" + "---|" * (2 * len(ks)))
    for name in CANDIDATES:
        cells = [f"{statistics.mean(t[(name, c, k)] for c in cats):.3f}" for t in (dev, test) for k in ks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def collect(fold: str, out: Path, categories, draws: int, ks=(1, 4), threads: int = 2) -> None:
    """Both scales' scores on `fold` (realsets when ../shared has them, and the synthetic set) into `out`."""
    import torch

    from evals.bench.patch_knn_protocol import realsets_splits, synthetic_splits
    from evals.bench.tools import REALSETS
    from evals.survey_scores import collect_split

    torch.set_num_threads(threads)
    splits = realsets_splits(REALSETS, fold) if (REALSETS / "index.csv").exists() else []
    splits += synthetic_splits(fold, n_train=max(8, max(ks)), n_test=20)
    with out.open("w") as f:
        for split in splits:
            if not categories or split.name in categories:
                collect_split(split, ks, draws, threads, f, (), configs())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.bench.two_scales", description=__doc__.split("\n")[0])
    parser.add_argument("dev", type=Path, nargs="?", help="an earlier collection of fold dev")
    parser.add_argument("test", type=Path, nargs="?", help="an earlier collection of fold test")
    parser.add_argument("--category", action="append", default=None, help="when collecting: only these categories")
    parser.add_argument("--draws", type=int, default=3, help="when collecting: reference draws")
    args = parser.parse_args(argv)
    if args.dev is None or args.test is None:
        folder = Path(tempfile.mkdtemp(prefix="two-scales-"))
        args.dev, args.test = folder / "dev.jsonl", folder / "test.jsonl"
        for fold, path in (("dev", args.dev), ("test", args.test)):
            collect(fold, path, args.category, args.draws)
        print(f"scores: {args.dev} {args.test}")
    dev_images, _ = load(args.dev)
    test_images, _ = load(args.test)
    dev, test = table(dev_images), table(test_images)
    cats = list(dict.fromkeys(c for c, _, _ in test_images))
    ks = sorted({k for _, k, _ in test_images})
    print("\n".join(report(dev, test, cats, ks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
