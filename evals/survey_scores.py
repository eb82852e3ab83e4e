"""Collect every survey tool's score on every protocol image, once, for the leave-category-out protocol.

    python -m evals.survey_scores --fold dev --out scores_dev.jsonl
    python -m evals.survey_scores --fold test --out scores_test.jsonl

For each category (realsets of the fold, synthetic of the fold's seed), each k and each reference draw
(the same draws as `evals.bench.patch_knn_protocol`), one JSON line per test image with each tool's
raw and calibrated score, and one line per (category, k, draw) with the references' own calibration
and the pixel AUROC of each map-making method. Fusion rules are then compared offline
(`evals.bench.lco_protocol`) without running a tool twice.

Tools: ``patch_knn`` (the committed default), ``patch_knn_fine`` (its second scale, unpooled), ``patchcore``
(the plain PatchCore on the same backbone, full bank: coreset 1.0), ``reference_diff`` and ``parts_check``
(defaults). Latency per image is timed as the survey runs them: the query's features are dropped before each
tool, except before ``patch_knn_fine``, which shares patch_knn's backbone pass in the survey too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from evals.bench.patch_knn_protocol import (
    PLAIN_PATCHCORE,
    _auroc,
    _drop_query_features,
    protocol_settings,
    realsets_splits,
    small_masks,
    synthetic_splits,
)
from evals.bench.tools import REALSETS, _small

SCORED_TOOLS = ("reference_diff", "parts_check")


SHARES_BACKBONE = "patch_knn_fine"  # timed right after patch_knn, with the query's backbone maps kept


def methods() -> dict:
    """The patch_knn configurations measured: the default, its second scale (the survey's) and the plain
    PatchCore with its full bank (first, so it never reuses another's backbone pass)."""
    from tools.patch_knn import FINE_CONFIG, PatchKnnConfig

    return {"patchcore": dataclasses.replace(PatchKnnConfig(), **PLAIN_PATCHCORE, coreset=1.0),
            "patch_knn": PatchKnnConfig(), SHARES_BACKBONE: FINE_CONFIG}


def collect_split(split, ks, draws: int, threads: int, out, tools=SCORED_TOOLS, configs: dict | None = None,
                  backbone: str | None = None) -> None:
    """Write the split's lines to `out` (a text file); `configs`: the patch_knn configurations measured (name ->
    PatchKnnConfig; default `methods()`); `backbone`: theirs when they name none (None: the configured one)."""
    from agent.survey_fusion import scales_lead
    from evals.datasets import select_references
    from tools.base import ToolContext
    from tools.images import ImageStore
    from tools.parts_check import PartsCheck
    from tools.patch_knn import PatchKnn
    from tools.reference_diff import ReferenceDiff

    store = ImageStore()
    test_ids = [store.add_file(s.path, prefix="test") for s in split.test]
    masks, has_masks = small_masks(store, split.test, test_ids)
    settings = protocol_settings(threads, Path(tempfile.mkdtemp(prefix="survey-maps-")), backbone)
    knn = {name: PatchKnn(cfg) for name, cfg in (configs or methods()).items()}
    others = {name: tool for name, tool in (("reference_diff", ReferenceDiff()), ("parts_check", PartsCheck()))
              if name in tools}
    for k in ks:
        for d in range(draws):
            paths = select_references(split.train_good, k, seed=d)
            ctx = ToolContext(store, settings=settings, category=split.name)
            ctx.reference_ids = [store.add_file(p, prefix="ref") for p in paths]
            rows = {tid: {"category": split.name, "source": split.source, "k": k, "draw": d,
                          "image": Path(s.path).name, "label": int(s.label), "defect": s.defect_type}
                    for s, tid in zip(split.test, test_ids, strict=True)}
            meta = {"kind": "set", "category": split.name, "source": split.source, "k": k, "draw": d,
                    "n_test": len(test_ids), "backbone": settings.backbone}
            for name, tool in knn.items():
                t0 = time.perf_counter()
                bank = tool.reference_bank(ctx)
                meta[f"{name}:bank_s"] = time.perf_counter() - t0
                meta[f"{name}:normal"] = list(map(float, bank.normal_scores))
            pixels: dict = {name: ([], []) for name in [*knn, "scales"]}
            for tid in test_ids:  # image by image, each tool in turn, as the survey runs them
                small = {}
                for name, tool in knn.items():
                    if name != SHARES_BACKBONE:
                        _drop_query_features(ctx)
                    t0 = time.perf_counter()
                    res = tool.measure(ctx, tid)
                    rows[tid][name] = [float(res.raw_score), float(res.score), (time.perf_counter() - t0) * 1000.0]
                    if has_masks and tid in masks:
                        small[name] = _small(res.anomaly_map, cv2.INTER_AREA).ravel()
                        pixels[name][0].append(masks[tid].ravel())
                        pixels[name][1].append(small[name])
                if {"patch_knn", SHARES_BACKBONE} <= set(small):  # the survey's map
                    lead = scales_lead(rows[tid]["patch_knn"][1], rows[tid][SHARES_BACKBONE][1])
                    pixels["scales"][0].append(masks[tid].ravel())
                    pixels["scales"][1].append(small[lead])
            for name, (ys, ps) in pixels.items():
                meta[f"{name}:pixel_auroc"] = _auroc(np.concatenate(ys), np.concatenate(ps)) if ys else None
            for name, tool in others.items():
                tool.setup(ctx)
                for tid in test_ids:
                    out_, ms = tool.timed_run({"image_id": tid}, ctx)
                    rows[tid][name] = [float(out_.raw_score), float(out_.score), ms]
                    if name == "reference_diff":
                        rows[tid]["rd_ncc"] = [out_.ncc_before, out_.ncc_after, out_.alignment]
                cal = [v for key, v in ctx.cache.items() if isinstance(key, tuple) and key
                       and str(key[0]).startswith({"reference_diff": "refdiff_calibrator",
                                                   "parts_check": "parts_calibration"}[name])]
                if cal:
                    c = cal[-1][1] if isinstance(cal[-1], tuple) else cal[-1]
                    meta[f"{name}:calibrator"] = [c.center, c.spread, c.n]
            for tid in test_ids:
                out.write(json.dumps({"kind": "image", **rows[tid]}) + "\n")
            out.write(json.dumps(meta) + "\n")
            out.flush()
            ctx.cache.clear()
            print(f"  {split.name} k={k} draw={d} done", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.survey_scores", description=__doc__.split("\n")[0])
    parser.add_argument("--fold", choices=("dev", "test"), default="dev")
    parser.add_argument("--k", type=int, action="append", default=None)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--category", action="append", default=None)
    parser.add_argument("--n-test-synthetic", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", type=Path, default=REALSETS)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tool", action="append", choices=SCORED_TOOLS,
                        help="the other tools to measure (default both)")
    parser.add_argument("--backbone", default=None,
                        help="patch_knn's and the plain PatchCore's backbone (default: ANOMALY_AGENT_BACKBONE or "
                             "efficientnet_lite0); its weights are found as the agent finds them")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    ks = tuple(args.k or (1, 4))
    splits = []
    if (args.dataset / "index.csv").exists():
        splits += realsets_splits(args.dataset, args.fold)
    splits += synthetic_splits(args.fold, n_train=max(8, max(ks)), n_test=args.n_test_synthetic)
    if args.category:
        splits = [s for s in splits if s.name in args.category]
    with args.out.open("a") as out:
        for split in splits:
            collect_split(split, ks, args.draws, args.threads, out, tuple(args.tool or SCORED_TOOLS),
                          backbone=args.backbone)
    return 0


if __name__ == "__main__":
    sys.exit(main())
