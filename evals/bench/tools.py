"""Tools benchmark: warm latency of every registered tool, and few-shot quality of the scoring tools.

    python -m evals.bench.tools                 # latency (256/512/1024 px) + quality (k = 1, 2, 4, 8)
    python -m evals.bench.tools --quick         # fewer repeats, k = 1 and 4, a test subset
    python -m evals.bench.tools --quality-only --set resolution=448 --set augment=flips

Latency: each tool is run on a synthetic textured image with 4 references, 2 torch threads; the first
call (weights, reference bank) is excluded, the table gives the median of the warm repeats beside
the backbone's bare forward pass and patch_knn's kNN search at the same working size.

Quality: image AUROC, F1-max (sklearn) and pixel AUROC (maps and masks resized to <= 256 px a side)
on ``../shared/data/realsets`` fold `--fold` (default ``dev``: settings are chosen there; ``test``
is for reporting; first-k references by name) and on the synthetic set when `evals.synthetic`
exists. Feature extraction is cached per category across k. Defaults of patch_knn are settled
with `evals.bench.patch_knn_protocol` (several categories, reference draws, a plain PatchCore).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from tools.tempdirs import temp_dir

REALSETS = Path(__file__).resolve().parents[3] / "shared" / "data" / "realsets"
SCORING_TOOLS = ("patch_knn", "clip_similarity", "reference_diff", "parts_check")
PIXEL_SIDE = 256
SAMPLE_ARGS = {"zoom": {"box": None}, "sam_crop": {"box": None}}  # box filled per image size


def _textured(seed: int, size: int) -> np.ndarray:
    """A smooth random grey texture, HxWx3 uint8 (size x size)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(128, 30, (size // 8 + 1, size // 8 + 1)).astype(np.float32)
    img = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _context(size: int, n_refs: int = 4, threads: int = 2):
    from tools.base import ToolContext, ToolSettings
    from tools.images import ImageStore

    store = ImageStore()
    query = store.add_array(_textured(100, size), "synthetic query", image_id="query")
    refs = [store.add_array(_textured(i, size), f"synthetic ref {i}", image_id=f"ref{i}") for i in range(n_refs)]
    out = temp_dir("bench-tools-")
    settings = ToolSettings(device="cpu", threads=threads, out_dir=out)
    return ToolContext(store, query_id=query, reference_ids=refs, settings=settings, category="texture")


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def latency_table(sizes=(256, 512, 1024), repeats: int = 5, threads: int = 2) -> list[dict]:
    """Warm latency per tool and image size (ms, median), beside patch_knn's parts."""
    import torch

    from tools.patch_knn import PatchKnn, patch_features, working_size
    from tools.registry import create_tool, tool_names

    torch.set_num_threads(threads)
    rows = []
    for size in sizes:
        ctx = _context(size, threads=threads)
        knn = PatchKnn()
        bank = knn.reference_bank(ctx)
        backbone = knn.backbone
        img = ctx.images.get("query")
        work = working_size(size, size, knn.config, bank.ref_long_side)
        x = backbone.to_tensor(img.pixels, work)
        layers = knn.config.layers or backbone.layers
        fwd = _median_ms(lambda x=x, b=backbone, layers=layers: b.feature_maps(x, layers), repeats)
        feats = patch_features(backbone, img.pixels, work, knn.config)
        search = _median_ms(lambda f=feats, b=bank: b.grid(f), repeats)
        row = {"size": size, "work": f"{work[1]}x{work[0]}", "bank": bank.index.ntotal,
               "forward_ms": fwd, "knn_ms": search}
        for name in tool_names():
            tool = create_tool(name)
            args = dict(SAMPLE_ARGS.get(name, {}))
            if "box" in args:
                args["box"] = [size // 4, size // 4, size // 2, size // 2]
            try:
                tool.run(args, ctx)  # cold: weights, reference features

                def call(tool=tool, ctx=ctx, name=name, args=args):
                    if name == "patch_knn":  # drop the query's cached features: a new image each call
                        for key in [k for k in ctx.cache if k[0] == "patch_knn:feat" and k[-1] == "query"]:
                            del ctx.cache[key]
                    tool.run(args, ctx)

                row[name] = _median_ms(call, repeats)
            except Exception as exc:  # noqa: BLE001 - a tool that cannot run here is reported, not fatal
                row[name] = f"n/a ({type(exc).__name__})"
        if isinstance(row.get("patch_knn"), float):
            row["patch_knn/(fwd+knn)"] = row["patch_knn"] / (fwd + search)
        rows.append(row)
    return rows


def _metrics(labels, scores) -> tuple[float | None, float | None]:
    from sklearn.metrics import precision_recall_curve, roc_auc_score

    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return None, None
    auroc = float(roc_auc_score(labels, scores))
    p, r, _ = precision_recall_curve(labels, scores)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    return auroc, float(f1.max())


def _small(arr: np.ndarray, interp: int) -> np.ndarray:
    h, w = arr.shape[:2]
    f = min(1.0, PIXEL_SIDE / max(h, w))
    if f >= 1.0:
        return arr
    return cv2.resize(arr, (max(1, round(w * f)), max(1, round(h * f))), interpolation=interp)


def quality_rows(
    dataset: Path,
    ks=(1, 2, 4, 8),
    config=None,
    max_test: int | None = None,
    categories=None,
    threads: int = 2,
    tools=("patch_knn",),
    fold: str | None = None,
) -> list[dict]:
    """Few-shot quality per (tool, category, k) on an MVTec-style/CSV dataset.

    Args:
        dataset: dataset root (see `evals.datasets.load_dataset`).
        ks: shot counts; references are the first k normal training images by name.
        config: `PatchKnnConfig` for patch_knn (None: the default).
        max_test: at most this many test images per category (evenly spaced; both labels kept).
        categories: restrict to these categories.
        tools: which scoring tools to evaluate (unregistered ones are skipped).
        fold: only the test images of this fold (the dataset's `fold` column; None: all).
    """
    import torch
    from sklearn.metrics import roc_auc_score

    from evals.datasets import load_dataset, load_mask, select_references
    from tools.base import ToolContext, ToolSettings
    from tools.images import ImageStore
    from tools.patch_knn import PatchKnn
    from tools.registry import create_tool, tool_names

    torch.set_num_threads(threads)
    rows = []
    names = [t for t in tools if t in tool_names()]
    for cat in load_dataset(dataset, categories=categories, fold=fold):
        test = cat.test
        if max_test and len(test) > max_test:
            idx = np.linspace(0, len(test) - 1, max_test).round().astype(int)
            test = [test[i] for i in sorted(set(idx))]
        store = ImageStore()
        ref_paths = select_references(cat.train_good, max(ks))
        ref_ids = [store.add_file(p, prefix="ref") for p in ref_paths]
        test_ids = [store.add_file(s.path, prefix="test") for s in test]
        out = temp_dir("bench-quality-")
        ctx = ToolContext(store, settings=ToolSettings(device="cpu", threads=threads, out_dir=out), category=cat.name)
        masks = {}
        for s, tid in zip(test, test_ids, strict=True):
            if s.mask_path:
                img = store.get(tid)
                masks[tid] = load_mask(s.mask_path, (img.height, img.width))
        for name in names:
            tool = PatchKnn(config) if name == "patch_knn" else create_tool(name)
            try:
                ctx.reference_ids = ref_ids[:1]
                tool.setup(ctx)
            except Exception as exc:  # noqa: BLE001 - e.g. missing weights: reported, not fatal
                print(f"(skipped {name} on {cat.name}: {exc})", file=sys.stderr)
                continue
            for k in ks:
                ctx.reference_ids = ref_ids[:k]
                t0 = time.perf_counter()
                scores, maps = [], {}
                for tid in test_ids:
                    if name == "patch_knn":
                        res = tool.measure(ctx, tid)
                        scores.append(res.raw_score)
                        if tid in masks or cat.has_masks:
                            maps[tid] = res.anomaly_map
                    else:
                        ctx.query_id = tid
                        outp = tool.run({}, ctx)
                        scores.append(outp.raw_score if outp.raw_score is not None else outp.score)
                labels = [s.label for s in test]
                auroc, f1 = _metrics(labels, scores)
                pix = None
                if maps:
                    ys, ps = [], []
                    for tid in test_ids:
                        if tid not in maps:
                            continue
                        img = store.get(tid)
                        mask = masks.get(tid, np.zeros((img.height, img.width), bool))
                        ys.append(_small(mask.astype(np.uint8), cv2.INTER_NEAREST).ravel())
                        ps.append(_small(maps[tid], cv2.INTER_AREA).ravel())
                    y = np.concatenate(ys)
                    if 0 < y.sum() < y.size:
                        pix = float(roc_auc_score(y, np.concatenate(ps)))
                rows.append({
                    "tool": name, "dataset": dataset.name, "category": cat.name, "k": k,
                    "n_test": len(test), "image_auroc": auroc, "f1_max": f1, "pixel_auroc": pix,
                    "s_per_img": (time.perf_counter() - t0) / len(test),
                })
                print(_fmt_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _fmt_row(row: dict) -> str:
    return "  ".join(f"{k}={_fmt(v)}" for k, v in row.items())


def print_table(rows: list[dict], title: str) -> None:
    """Markdown table of dict rows (union of keys, in first-seen order)."""
    if not rows:
        print(f"\n{title}: (no rows)")
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print(f"\n### {title}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")


def _parse_sets(items: list[str]):
    from tools.patch_knn import PatchKnnConfig

    fields = {f.name: f for f in dataclasses.fields(PatchKnnConfig)}
    values = {}
    for item in items:
        key, _, raw = item.partition("=")
        if key not in fields:
            msg = f"--set {item}: unknown PatchKnnConfig field; valid: {', '.join(fields)}"
            raise SystemExit(msg)
        default = getattr(PatchKnnConfig(), key)
        if key == "layers":
            values[key] = tuple(raw.split("+")) if raw else None
        elif key == "backbone":
            values[key] = raw or None
        elif isinstance(default, bool):
            values[key] = raw.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            values[key] = int(raw)
        elif isinstance(default, float):
            values[key] = float(raw)
        else:
            values[key] = raw
    return PatchKnnConfig(**values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.bench.tools", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, k=1,4, <=40 test images")
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument("--quality-only", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="PatchKnnConfig field")
    parser.add_argument("--dataset", type=Path, default=REALSETS, help="MVTec-style or CSV dataset root")
    parser.add_argument("--category", action="append", default=None)
    parser.add_argument("--k", type=int, action="append", default=None, help="shot counts (repeatable)")
    parser.add_argument("--max-test", type=int, default=None)
    parser.add_argument("--fold", default="dev", help="realsets fold: dev (choose settings) or test (report)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic set")
    parser.add_argument("--tools", default=",".join(SCORING_TOOLS), help="scoring tools for quality")
    args = parser.parse_args(argv)
    config = _parse_sets(args.set)
    print(f"patch_knn config: {config}")
    if not args.quality_only:
        sizes = (256, 512) if args.quick else (256, 512, 1024)
        print_table(latency_table(sizes, repeats=3 if args.quick else 7, threads=args.threads),
                    "warm latency, ms (median), 2 threads, 4 references")
    if args.latency_only:
        return 0
    tools = tuple(t for t in args.tools.split(",") if t)
    ks = tuple(args.k or ((1, 4) if args.quick else (1, 2, 4, 8)))
    max_test = args.max_test or (40 if args.quick else None)
    rows = []
    if (args.dataset / "index.csv").exists() or args.dataset.is_dir():
        fold = args.fold if args.dataset == REALSETS else None
        rows += quality_rows(args.dataset, ks, config, max_test, args.category, args.threads, tools, fold)
    else:
        print(f"\n(dataset {args.dataset} not found: realsets quality skipped)")
    if args.no_synthetic:
        pass
    elif importlib.util.find_spec("evals.synthetic") is not None and args.dataset == REALSETS:
        from evals.synthetic import generate_dataset

        synth = temp_dir("bench-synth-") / "synthetic"
        generate_dataset(synth, seed=0, n_train=max(ks), n_test=10 if args.quick else 30)
        rows += quality_rows(synth, ks, config, max_test, None, args.threads, tools)
    else:
        print("\n(evals.synthetic not available: synthetic quality skipped)")
    print_table(rows, "few-shot quality (first-k references)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
