"""patch_knn protocol: settle defaults on many categories at once, beside a plain PatchCore.

    python -m evals.bench.patch_knn_protocol                          # defaults vs PatchCore, fold dev
    python -m evals.bench.patch_knn_protocol --set augment=none       # + a candidate setting
    python -m evals.bench.patch_knn_protocol --fold test              # the numbers to report

Categories: every realsets category (``../shared/data/realsets``, test images of the chosen
`fold` from its ``index.csv``) and every synthetic category (`evals.synthetic`, seed 0 for
``dev`` and seed 1 for ``test``). References: `--draws` random draws of k normal training images
per category (seeds 0, 1, 2, ...), for each k of `--k`; metrics are the mean over draws.

Methods, all through `tools.patch_knn.PatchKnn` in one process:
- ``patchcore``: a plain PatchCore on the same backbone (`PLAIN_PATCHCORE`: 224 px square input,
  the two default stages, 3x3 pooling, raw features, max patch score, the full bank of the
  references, exact faiss search, the map blurred with sigma 4 px at 224 px);
- ``default``: `PatchKnnConfig()` as committed;
- ``candidate``: the defaults with `--set` overrides (only when `--set` is given).

Per (method, category, k): image AUROC and pixel AUROC (masks only; maps and masks at <= 256 px
a side), recall and false-positive rate at the default threshold (calibrated score >= 0.5),
and warm per-image latency (median over `--latency-images` test images of draw 0 at the largest
k, the query's features recomputed every time; methods interleaved image by image).
A candidate is adopted only when it raises the mean image AUROC over all categories and lowers
no category by more than 0.01 (the table's last column says so per k).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from evals.bench.tools import REALSETS, _parse_sets, _small, print_table

PLAIN_PATCHCORE = dict(resolution=224, square=True, pool=3, layer_norm="none", augment="none", topk=0.0,
                       border=0, grey_norm="none", blur_sigma=0.5)
ADOPT_DROP = 0.01


@dataclasses.dataclass
class Split:
    """One category's protocol data: reference pool and the fold's test samples."""

    name: str
    source: str
    train_good: list[str]
    test: list  # evals.datasets.Sample


def realsets_splits(root: Path, fold: str) -> list[Split]:
    """Realsets categories with the test samples of `fold` (from index.csv's `fold` column)."""
    from evals.datasets import load_dataset

    rows = list(csv.DictReader((root / "index.csv").open()))
    folds = {str((root / r["path"]).resolve()): r.get("fold", "") for r in rows}
    if not any(folds.values()):
        msg = f"{root / 'index.csv'} has no 'fold' column; the protocol needs dev/test folds"
        raise SystemExit(msg)
    out = []
    for cat in load_dataset(root, layout="folder"):
        test = [s for s in cat.test if folds.get(str(Path(s.path).resolve())) == fold]
        out.append(Split(cat.name, "realsets", cat.train_good, test))
    return out


def synthetic_splits(fold: str, n_train: int, n_test: int) -> list[Split]:
    """Every synthetic category: seed 0 for the dev fold, seed 1 for the test fold."""
    from evals.datasets import load_dataset
    from evals.synthetic import generate_dataset

    root = Path(tempfile.mkdtemp(prefix="protocol-synth-")) / fold
    generate_dataset(root, seed=0 if fold == "dev" else 1, n_train=n_train, n_test=n_test)
    return [Split(c.name, "synthetic", c.train_good, c.test) for c in load_dataset(root, layout="folder")]


def _auroc(labels, scores) -> float | None:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    return None if labels.min() == labels.max() else float(roc_auc_score(labels, scores))


def _drop_query_features(ctx) -> None:
    for key in [k for k in ctx.cache if isinstance(k, tuple) and k and k[0] in ("patch_knn:feat", "patch_knn:maps") and k[-1] == "query"]:
        del ctx.cache[key]


def small_masks(store, samples, test_ids: list[str]) -> tuple[dict, bool]:
    """(test id -> its ground-truth mask at <= 256 px a side (uint8; all zero for a normal image; anomalies
    without a mask are left out), whether any mask marks a pixel)."""
    from evals.datasets import load_mask

    masks = {}
    for s, tid in zip(samples, test_ids, strict=True):
        img = store.get(tid)
        if s.mask_path:
            masks[tid] = _small(load_mask(s.mask_path, (img.height, img.width)).astype(np.uint8), cv2.INTER_NEAREST)
        elif s.label == 0:
            masks[tid] = _small(np.zeros((img.height, img.width), np.uint8), cv2.INTER_NEAREST)
    return masks, any(m.any() for m in masks.values())


def protocol_settings(threads: int, out_dir: Path, backbone: str | None = None):
    """The `ToolSettings` of a protocol run: the user's configuration (`ANOMALY_AGENT_*` variables, e.g. the
    backbone and where its weights are), on the CPU with `threads` threads, maps under `out_dir`, and no bank
    kept between runs. `backbone` (a `tools.backbones` name) overrides the configured one."""
    from agent.config import load_config

    return load_config(backbone=backbone, device="cpu", threads=threads, bank_cache=False).tool_settings(out_dir)


def evaluate_split(split: Split, methods: dict, ks, draws: int, latency_images: int, threads: int,
                   backbone: str | None = None) -> list[dict]:
    """Rows of (method, category, k) metrics, each the mean over `draws` reference draws, on `backbone` (None:
    the configured one)."""
    from evals.datasets import select_references
    from tools.base import ToolContext
    from tools.images import ImageStore
    from tools.patch_knn import PatchKnn

    store = ImageStore()
    test_ids = [store.add_file(s.path, prefix="test") for s in split.test]
    labels = [s.label for s in split.test]
    masks, has_masks = small_masks(store, split.test, test_ids)
    ref_ids = {}
    for k in ks:
        for d in range(draws):
            paths = select_references(split.train_good, k, seed=d)
            ref_ids[(k, d)] = [store.add_file(p, prefix="ref") for p in paths]
    out_dir = Path(tempfile.mkdtemp(prefix="protocol-maps-"))
    settings = protocol_settings(threads, out_dir, backbone)
    rows = []
    tools = {}
    for name, cfg in methods.items():
        tool = PatchKnn(cfg)
        ctx = ToolContext(store, settings=settings, category=split.name)
        tools[name] = (tool, ctx)
        for k in ks:
            per_draw = []
            for d in range(draws):
                ctx.reference_ids = ref_ids[(k, d)]
                t0 = time.perf_counter()
                tool.reference_bank(ctx)
                bank_s = time.perf_counter() - t0
                scores, calibrated, ys, ps = [], [], [], []
                for tid in test_ids:
                    res = tool.measure(ctx, tid)
                    scores.append(res.raw_score)
                    calibrated.append(res.score)
                    if has_masks and tid in masks:
                        ys.append(masks[tid].ravel())
                        ps.append(_small(res.anomaly_map, cv2.INTER_AREA).ravel())
                pred = np.asarray(calibrated) >= 0.5
                y = np.asarray(labels, bool)
                pix = _auroc(np.concatenate(ys), np.concatenate(ps)) if ys else None
                per_draw.append({
                    "image_auroc": _auroc(labels, scores), "pixel_auroc": pix,
                    "recall": float(pred[y].mean()) if y.any() else None,
                    "fpr": float(pred[~y].mean()) if (~y).any() else None,
                    "bank_s": bank_s,
                    "choices": getattr(tool.reference_bank(ctx), "choices", ""),
                })
            row = {"method": name, "category": split.name, "k": k, "n_test": len(test_ids)}
            for key in ("image_auroc", "pixel_auroc", "recall", "fpr", "bank_s"):
                vals = [r[key] for r in per_draw if r[key] is not None]
                row[key] = float(np.mean(vals)) if vals else None
            row["image_auroc_draws"] = [r["image_auroc"] for r in per_draw]
            row["choices"] = "; ".join(sorted({str(r["choices"]) for r in per_draw if r["choices"]}))
            rows.append(row)
            print("  ".join(f"{a}={b:.3f}" if isinstance(b, float) else f"{a}={b}" for a, b in row.items()),
                  file=sys.stderr, flush=True)
    # warm latency, methods interleaved image by image, draw 0 of the largest k
    k = max(ks)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for tool, ctx in tools.values():
        ctx.reference_ids = ref_ids[(k, 0)]
        tool.reference_bank(ctx)
    for tid in test_ids[:: max(1, len(test_ids) // max(1, latency_images))][:latency_images]:
        for name, (tool, ctx) in tools.items():
            _drop_query_features(ctx)
            t0 = time.perf_counter()
            tool.measure(ctx, tid)
            times[name].append((time.perf_counter() - t0) * 1000.0)
    for row in rows:
        row["latency_ms"] = statistics.median(times[row["method"]]) if times[row["method"]] else None
    for _, ctx in tools.values():
        ctx.cache.clear()
    return rows


def summary_rows(rows: list[dict], ks) -> list[dict]:
    """One row per (category, k): every method's image/pixel AUROC, recall, FPR and latency."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cats = list(dict.fromkeys(r["category"] for r in rows))
    by = {(r["method"], r["category"], r["k"]): r for r in rows}
    out = []
    for k in ks:
        for cat in cats + ["mean"]:
            line = {"category": cat, "k": k}
            for m in methods:
                if cat == "mean":
                    sel = [by[(m, c, k)] for c in cats if (m, c, k) in by]
                    for key in ("image_auroc", "pixel_auroc", "recall", "fpr", "latency_ms"):
                        vals = [r[key] for r in sel if r.get(key) is not None]
                        line[f"{m}:{key}"] = float(np.mean(vals)) if vals else None
                else:
                    r = by.get((m, cat, k), {})
                    for key in ("image_auroc", "pixel_auroc", "recall", "fpr", "latency_ms"):
                        line[f"{m}:{key}"] = r.get(key)
            out.append(line)
    return out


def verdicts(rows: list[dict], ks, base: str, new: str) -> list[str]:
    """The adoption rule for `new` against `base`: mean up, no category down by > ADOPT_DROP."""
    by = {(r["method"], r["category"], r["k"]): r for r in rows}
    cats = list(dict.fromkeys(r["category"] for r in rows))
    lines = []
    for k in ks:
        diffs = {c: by[(new, c, k)]["image_auroc"] - by[(base, c, k)]["image_auroc"] for c in cats
                 if by.get((new, c, k), {}).get("image_auroc") is not None
                 and by.get((base, c, k), {}).get("image_auroc") is not None}
        if not diffs:
            continue
        mean = float(np.mean(list(diffs.values())))
        worst = min(diffs, key=diffs.get)
        ok = mean > 0 and diffs[worst] >= -ADOPT_DROP
        lines.append(f"k={k}: {new} vs {base}: mean image AUROC {mean:+.4f}, worst {worst} {diffs[worst]:+.4f} -> "
                     f"{'adopt' if ok else 'reject'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.bench.patch_knn_protocol",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--fold", choices=("dev", "test"), default="dev")
    parser.add_argument("--k", type=int, action="append", default=None, help="shot counts (default 1 and 4)")
    parser.add_argument("--draws", type=int, default=3, help="reference draws per k")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a candidate's PatchKnnConfig override (repeatable)")
    parser.add_argument("--category", action="append", default=None, help="only these categories")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--no-realsets", action="store_true")
    parser.add_argument("--no-patchcore", action="store_true")
    parser.add_argument("--n-test-synthetic", type=int, default=20)
    parser.add_argument("--latency-images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", type=Path, default=REALSETS)
    parser.add_argument("--backbone", default=None,
                        help="every method's backbone (default: ANOMALY_AGENT_BACKBONE or efficientnet_lite0); "
                             "its weights are found as the agent finds them (ANOMALY_AGENT_WEIGHTS_DIR, ...)")
    args = parser.parse_args(argv)

    import torch

    from tools.patch_knn import PatchKnnConfig

    torch.set_num_threads(args.threads)
    ks = tuple(args.k or (1, 4))
    methods = {}
    if not args.no_patchcore:
        methods["patchcore"] = dataclasses.replace(PatchKnnConfig(), **PLAIN_PATCHCORE)
    methods["default"] = PatchKnnConfig()
    if args.set:
        methods["candidate"] = _parse_sets(args.set)
    for name, cfg in methods.items():
        print(f"{name}: {cfg}")
    splits = []
    if not args.no_realsets:
        if (args.dataset / "index.csv").exists():
            splits += realsets_splits(args.dataset, args.fold)
        else:
            print(f"(realsets not found at {args.dataset}: skipped)")
    if not args.no_synthetic:
        splits += synthetic_splits(args.fold, n_train=max(8, max(ks)), n_test=args.n_test_synthetic)
    if args.category:
        splits = [s for s in splits if s.name in args.category]
    rows = []
    t0 = time.perf_counter()
    for split in splits:
        rows += evaluate_split(split, methods, ks, args.draws, args.latency_images, args.threads, args.backbone)
    print(f"\nfold {args.fold}, {args.draws} draws, {time.perf_counter() - t0:.0f} s")
    print_table(summary_rows(rows, ks), f"patch_knn protocol, fold {args.fold}, mean of {args.draws} draws")
    for line in verdicts(rows, ks, "patchcore", "default") if "patchcore" in methods else []:
        print(line)
    if "candidate" in methods:
        for line in verdicts(rows, ks, "default", "candidate"):
            print(line)
    choices = {(r["method"], r["category"]): r["choices"] for r in rows if r.get("choices")}
    if choices:
        print("\nrun-time choices:")
        for (m, c), text in choices.items():
            print(f"  {m} / {c}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
