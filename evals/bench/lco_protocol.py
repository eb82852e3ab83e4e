"""Leave-category-out protocol for the survey's defaults: chosen on the other categories, measured on this one.

    python -m evals.survey_scores --fold dev  --out dev.jsonl     # the tools' scores, once
    python -m evals.survey_scores --fold test --out test.jsonl
    python -m evals.bench.lco_protocol dev.jsonl test.jsonl             # the table
    python -m evals.bench.lco_protocol --tool parts_check                # collect both folds, then the table

A user's product is a category nobody tuned on. So for each category C, the candidate with the best mean
image AUROC on the *other* categories' dev folds (both k, all draws) is chosen, and C's test fold
measures it. The table gives, per category and k, the test image AUROC of patch_knn alone (today's
survey), of the plain PatchCore (full bank), and of the fused survey chosen without C, and each
method's median warm latency per image; then the leave-category-out mean and minimum.

The candidate grid is declared here, before any run (`CANDIDATES`): patch_knn alone, the plain PatchCore,
the two scales (patch_knn + patch_knn_fine, summed: `agent.survey_fusion`, "Two scales"; added 2026-12-04
with its own grid below), and the survey fusion rules of `agent.survey_fusion` over a small weight grid, on
either base reading (patch_knn, or the two scales: names starting "scales+"):
- ``add``: patch_knn's log-odds plus each other tool's weighted log-odds beyond its edge (one-sided);
- ``max``: the largest of patch_knn's and the other tools' weighted log-odds.
A weighted mean of all log-odds (the old agent.fusion rule) is not a candidate: a tool that measures
nothing pulls a clear patch_knn reading toward normal (issue 22's "incidental tools dilute"), so it is
unsafe whatever it scores here. Weights: reference_diff and parts_check each 0, 0.25, 0.5 or 1; each rule
with the other tools counted at k = 1 too (",k1") or only at k >= 2 (a single reference cannot show a
tool's own variation, and augmented copies calibrate reference_diff far too tightly).
Only candidates within MAX_LATENCY_RATIO (3x) of the plain PatchCore's median latency on dev are chosen.
Adoption (the issue's rule): the leave-category-out mean rises and no category drops by more than 0.01
against patch_knn alone or the plain PatchCore.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from agent.fusion import _logit
from agent.survey_fusion import SurveyTerm

OTHER_TOOLS = ("reference_diff", "parts_check")
WEIGHTS = (0.0, 0.25, 0.5, 1.0)
PC_WEIGHTS = (0.0, 0.25, 0.5, 1.0)
MAX_LATENCY_RATIO = 3.0  # a candidate slower than this times the plain PatchCore (median, dev) is not chosen
ADOPT_DROP = 0.01
SHIPPED = "scales"  # the survey's reading today (agent.survey_fusion: the two scales, no other tool counted)


SCALE_EDGES = {"leave-one-out": (1.05, 1.10, 1.15, 1.20), "augmented copies": (1.6, 1.8, 2.0, 2.2)}
MAX_MEAN_FPR = 0.15  # an edge factor whose mean false-positive rate on the dev categories is above this is not chosen


def _candidates() -> dict[str, tuple]:
    """name -> (rule, w_reference_diff, w_parts_check, single, scales): `single` counts the other tools at k = 1
    too; `scales`: the base reading is the two scales summed (else patch_knn alone)."""
    out: dict[str, tuple] = {"patch_knn": ("base",), "patchcore": ("patchcore",), "scales": ("scales",)}
    for rule, w_rd, w_pc, single, scales in itertools.product(("add", "max"), WEIGHTS, PC_WEIGHTS, (False, True),
                                                              (False, True)):
        if w_rd == 0 and w_pc == 0:
            continue
        name = f"{'scales+' if scales else ''}{rule}(rd={w_rd:g},pc={w_pc:g}{',k1' if single else ''})"
        out[name] = (rule, w_rd, w_pc, single, scales)
    return out


CANDIDATES = _candidates()


def calibration_of(k: int) -> str:
    """How patch_knn calibrates with k references: "leave-one-out" (k >= 2) or "augmented copies"."""
    return "leave-one-out" if k >= 2 else "augmented copies"


def log_odds(row: dict, tool: str) -> float:
    """The tool's unbounded log-odds on the image, (raw - edge) / spread, from its references' calibration."""
    from tools.calibration import Z_EDGE, Calibrator
    from tools.patch_knn import PatchKnn

    meta = row["_set"]
    raw = row[tool][0]
    if tool in ("patch_knn", "patchcore"):
        cal = PatchKnn._calibrate(meta[f"{tool}:normal"], calibration_of(row["k"]))
    else:
        center, spread, n = meta[f"{tool}:calibrator"]
        cal = Calibrator(center, spread, n)
    return cal.z(raw) - Z_EDGE


def scales_log_odds(row: dict, edge: float | None = None) -> float:
    """The two scales' log-odds (`agent.survey_fusion.scales_reading`): raw scores summed, calibrated on the
    references' own sums with `edge` (None: the shipped `SCALE_EDGE`)."""
    from agent.survey_fusion import FINE_TOOL, SCALE_EDGE
    from tools.patch_knn import calibrate_edge

    meta = row["_set"]
    how = calibration_of(row["k"])
    normal = [a + b for a, b in zip(meta["patch_knn:normal"], meta[f"{FINE_TOOL}:normal"], strict=True)]
    cal = calibrate_edge(normal, how, SCALE_EDGE[how] if edge is None else edge)
    return cal.log_odds(row["patch_knn"][0] + row[FINE_TOOL][0])


def fused(rule: tuple, row: dict) -> float:
    """The candidate's fused log-odds for one image row (a monotone map of its fused score)."""
    kind = rule[0]
    if kind == "base":
        return row["patch_knn"][0]  # raw: the same ranking as its calibrated score, without saturation
    if kind == "patchcore":
        return row["patchcore"][0]
    if kind == "scales":
        return row["patch_knn"][0] + row["patch_knn_fine"][0]  # raw sum: the order of its log-odds
    w = {"reference_diff": rule[1], "parts_check": rule[2]}
    if row["k"] < 2 and not rule[3]:
        w = {t: 0.0 for t in w}
    base = scales_log_odds(row) if rule[4] else log_odds(row, "patch_knn")
    if kind == "add":  # exactly the shipped rule (agent.survey_fusion), before its monotone output map
        terms = [SurveyTerm("patch_knn", 0.5, 1.0, "", base)]  # the base term counts by its log-odds
        terms += [SurveyTerm(t, row[t][1], w[t], "") for t in OTHER_TOOLS if t in row and w[t] > 0]
        return sum(t.contribution for t in terms)
    others = [(w[t], _logit(row[t][1])) for t in OTHER_TOOLS if t in row and w[t] > 0]
    return max([base, *(wi * li for wi, li in others)])


def _auroc(labels, scores) -> float | None:
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    return None if labels.min() == labels.max() else float(roc_auc_score(labels, scores))


def load(path: Path) -> tuple[dict, dict]:
    """(images by (category, k, draw), set lines by (category, k, draw))."""
    images: dict = defaultdict(list)
    sets: dict = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        key = (row["category"], row["k"], row["draw"])
        if row["kind"] == "image":
            images[key].append(row)
        else:
            sets[key] = row
    for key, rows in images.items():
        for row in rows:
            row["_set"] = sets[key]
    return images, sets


def table(images: dict) -> dict:
    """AUROC of every candidate: {(candidate, category, k): mean over draws}."""
    per: dict = defaultdict(list)
    for (cat, k, _d), rows in images.items():
        labels = [r["label"] for r in rows]
        for name, rule in CANDIDATES.items():
            a = _auroc(labels, [fused(rule, r) for r in rows])
            if a is not None:
                per[(name, cat, k)].append(a)
    return {key: float(np.mean(v)) for key, v in per.items()}


def recall_fpr(images: dict, rule: tuple, edge: float | None = None) -> dict:
    """Recall and FPR at the default threshold (fused score >= 0.5), {(category, k): (recall, fpr)}; `edge`: the
    two scales' edge factor (None: the shipped one)."""
    per: dict = defaultdict(list)
    for (cat, k, _d), rows in images.items():
        if rule[0] in ("base", "patchcore"):
            tool = "patch_knn" if rule[0] == "base" else "patchcore"
            pred = np.array([r[tool][1] >= 0.5 for r in rows])
        elif rule[0] == "scales":
            pred = np.array([scales_log_odds(r, edge) >= 0.0 for r in rows])
        else:
            pred = np.array([fused(rule, r) >= 0.0 for r in rows])
        y = np.array([r["label"] == 1 for r in rows])
        per[(cat, k)].append((float(pred[y].mean()), float(pred[~y].mean())))
    return {key: tuple(np.mean(v, axis=0)) for key, v in per.items()}


def latency(images: dict, rule: tuple) -> dict:
    """Median per-image ms of a candidate (the sum of the tools it runs), {(category, k): ms}."""
    per: dict = defaultdict(list)
    for (cat, k, _d), rows in images.items():
        for r in rows:
            if rule[0] == "patchcore":
                per[(cat, k)].append(r["patchcore"][2])
            elif rule[0] == "base":
                per[(cat, k)].append(r["patch_knn"][2])
            else:
                if rule[0] == "scales":
                    used = ["patch_knn", "patch_knn_fine"]
                else:
                    used = ["patch_knn", *(["patch_knn_fine"] if rule[4] else []),
                            *(t for t, w in zip(OTHER_TOOLS, rule[1:3], strict=True) if w > 0)]
                # a tool that was not collected (`--tool`) makes the candidate unmeasured: never fast enough
                per[(cat, k)].append(sum(r[t][2] if t in r else math.inf for t in used))
    return {key: statistics.median(v) for key, v in per.items()}


def choose_edge(dev_images: dict, k: int, exclude: str | None) -> float:
    """The two scales' edge factor (`SCALE_EDGES`, for k's calibration) with the best mean recall - FPR at the
    default threshold over the dev categories other than `exclude`, among those whose mean FPR there is at most
    MAX_MEAN_FPR (none: the strictest factor; ties: the first)."""
    how = calibration_of(k)
    rows = {key: v for key, v in dev_images.items() if key[1] == k and key[0] != exclude}
    if not rows:
        return max(SCALE_EDGES[how])
    scored = []
    for i, edge in enumerate(SCALE_EDGES[how]):
        rf = list(recall_fpr(rows, ("scales",), edge).values())
        if np.mean([f for _, f in rf]) <= MAX_MEAN_FPR:
            scored.append((float(np.mean([r - f for r, f in rf])) - 1e-9 * i, edge))
    return max(scored)[1] if scored else max(SCALE_EDGES[how])


def fast_enough(images: dict) -> set[str]:
    """Candidates whose median latency over `images` is at most MAX_LATENCY_RATIO x the plain PatchCore's."""
    pc = statistics.median(r["patchcore"][2] for rows in images.values() for r in rows)
    out = set()
    for name, rule in CANDIDATES.items():
        lat = latency(images, rule)
        if statistics.median(lat.values()) <= MAX_LATENCY_RATIO * pc:
            out.add(name)
    return out


def choose(dev: dict, cats: list[str], ks, exclude: str | None, allowed: set[str] | None = None) -> str:
    """The fusion candidate with the best mean dev AUROC over the categories other than `exclude`
    (among `allowed`, when given)."""
    best, best_score = None, -1.0
    for name, rule in CANDIDATES.items():
        if rule[0] in ("base", "patchcore") or (allowed is not None and name not in allowed):
            continue
        vals = [dev[(name, c, k)] for c in cats if c != exclude for k in ks if (name, c, k) in dev]
        score = float(np.mean(vals))
        if score > best_score + 1e-12:
            best, best_score = name, score
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.bench.lco_protocol", description=__doc__.split("\n")[0])
    parser.add_argument("dev", type=Path, nargs="?", help="survey_scores output of fold dev (default: collect it)")
    parser.add_argument("test", type=Path, nargs="?", help="survey_scores output of fold test (default: collect it)")
    parser.add_argument("--category", action="append", default=None, help="when collecting: only these categories")
    parser.add_argument("--draws", type=int, default=3, help="when collecting: reference draws")
    parser.add_argument("--tool", action="append", default=None,
                        help="when collecting: the other tools to measure (default both; reference_diff is slow)")
    parser.add_argument("--only", action="append", default=None, metavar="CANDIDATE",
                        help="choose among these candidates only (e.g. --only scales: the two scales as the one change)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or []) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidate(s) {', '.join(unknown)}; e.g. {', '.join(list(CANDIDATES)[:4])}")
    if args.dev is None or args.test is None:
        import tempfile

        from evals.survey_scores import main as collect

        folder = Path(tempfile.mkdtemp(prefix="lco-"))
        for fold in ("dev", "test"):
            extra = [a for c in args.category or [] for a in ("--category", c)]
            extra += [a for t in args.tool or [] for a in ("--tool", t)]
            collect(["--fold", fold, "--draws", str(args.draws), "--out", str(folder / f"{fold}.jsonl"), *extra])
        args.dev, args.test = folder / "dev.jsonl", folder / "test.jsonl"
    dev_images, _ = load(args.dev)
    test_images, test_sets = load(args.test)
    dev, test = table(dev_images), table(test_images)
    cats = list(dict.fromkeys(c for c, _, _ in test_images))
    ks = sorted({k for _, k, _ in test_images})
    allowed = fast_enough(dev_images) & set(args.only or CANDIDATES)
    print(f"{len(allowed)} of {len(CANDIDATES)} candidates within {MAX_LATENCY_RATIO:g}x the plain PatchCore's "
          "median latency on dev")
    shipped = choose(dev, cats, ks, None, allowed)
    print(f"candidates: {len(CANDIDATES)}; chosen on every dev category (the shipped default): {shipped}")
    pix = defaultdict(list)
    for (cat, k, _d), meta in test_sets.items():
        for m in ("patch_knn", "patchcore", "scales"):
            if meta.get(f"{m}:pixel_auroc") is not None:
                pix[(m, cat, k)].append(meta[f"{m}:pixel_auroc"])
    lat = {name: latency(test_images, CANDIDATES[name]) for name in ("patch_knn", "patchcore")}
    header = ("category", "k", "LCO choice", "fused", "patch_knn", "PatchCore", "pixel fused", "pixel pk", "pixel PC",
              "ms fused", "ms pk", "ms PC", "fused/PC", "pk/PC")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    summary = defaultdict(list)
    for k in ks:
        for cat in cats:
            pick = choose(dev, cats, ks, cat, allowed)
            f, p, c = test[(pick, cat, k)], test[("patch_knn", cat, k)], test[("patchcore", cat, k)]
            lf = latency(test_images, CANDIDATES[pick])[(cat, k)]
            lp, lc = lat["patch_knn"][(cat, k)], lat["patchcore"][(cat, k)]
            pp, pc, pf = (np.mean(pix[(m, cat, k)]) if pix[(m, cat, k)] else None
                          for m in ("patch_knn", "patchcore", "scales"))
            if not (pick == "scales" or CANDIDATES[pick][4]):
                pf = pp  # the survey's map is patch_knn's unless the two scales count (then the one that sees more)
            summary[k].append((f, p, c))
            print(f"| {cat} | {k} | {pick} | {f:.3f} | {p:.3f} | {c:.3f} | {'-' if pf is None else f'{pf:.3f}'} | "
                  f"{'-' if pp is None else f'{pp:.3f}'} | {'-' if pc is None else f'{pc:.3f}'} | "
                  f"{lf:.1f} | {lp:.1f} | {lc:.1f} | {lf / lc:.2f}x | {lp / lc:.2f}x |")
        arr = np.array(summary[k])
        print(f"| **mean** | {k} | | {arr[:, 0].mean():.3f} | {arr[:, 1].mean():.3f} | {arr[:, 2].mean():.3f} | | | | | | | | |")
        print(f"| **min** | {k} | | {arr[:, 0].min():.3f} | {arr[:, 1].min():.3f} | {arr[:, 2].min():.3f} | | | | | | | | |")
    for k in ks:
        arr = np.array(summary[k])
        d_pk, d_pc = arr[:, 0] - arr[:, 1], arr[:, 0] - arr[:, 2]
        print(f"k={k}: fused - patch_knn mean {d_pk.mean():+.4f} (worst {d_pk.min():+.4f}); "
              f"fused - PatchCore mean {d_pc.mean():+.4f} (worst {d_pc.min():+.4f})")
    # adoption, decided on fold dev alone: each category's pick made on the others, against patch_knn alone
    drops, gains = {}, []
    for k in ks:
        for cat in cats:
            pick = choose(dev, cats, ks, cat, allowed)
            d = dev[(pick, cat, k)] - dev[("patch_knn", cat, k)]
            gains.append(d)
            drops[(cat, k)] = d
    worst = min(drops, key=drops.get)
    adopt = float(np.mean(gains)) > 0 and drops[worst] >= -ADOPT_DROP - 1e-9  # a drop of exactly 0.01 is allowed
    print(f"\ndev, leave-category-out, fused vs patch_knn alone: mean {np.mean(gains):+.4f}, worst {worst} "
          f"{drops[worst]:+.4f} -> {'adopt' if adopt else f'reject: the survey keeps its shipped reading ({SHIPPED})'}")
    default = shipped if adopt else SHIPPED
    rf = recall_fpr(test_images, CANDIDATES[default])
    print(f"\nshipped default {default} at threshold 0.5, fold test (recall / FPR):")
    for (cat, k), (r, fp) in sorted(rf.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"  k={k} {cat}: recall {r:.2f} FPR {fp:.2f}")
    if "patch_knn_fine" in next(iter(test_images.values()))[0]:
        _edge_report(dev_images, test_images, cats, ks)
    return 0


def _edge_report(dev_images: dict, test_images: dict, cats: list[str], ks) -> None:
    """The two scales' edge factor, leave-category-out: chosen on the others' dev folds (`choose_edge`), recall /
    FPR at the default threshold on this category's test fold, beside patch_knn alone."""
    from agent.survey_fusion import SCALE_EDGE

    print("\nthe two scales' edge factor, leave-category-out (recall / FPR on fold test; patch_knn alone after it):")
    for k in ks:
        print(f"  k={k}: chosen on every dev category {choose_edge(dev_images, k, None):g} "
              f"(shipped: {SCALE_EDGE[calibration_of(k)]:g})")
        rec, fpr = [], []
        for cat in cats:
            edge = choose_edge(dev_images, k, cat)
            rows = {key: v for key, v in test_images.items() if key[0] == cat and key[1] == k}
            r, f = recall_fpr(rows, ("scales",), edge)[(cat, k)]
            rp, fp = recall_fpr(rows, ("base",))[(cat, k)]
            rec.append(r)
            fpr.append(f)
            print(f"    {cat}: edge {edge:g}: {r:.2f} / {f:.2f}  (patch_knn {rp:.2f} / {fp:.2f})")
        print(f"    mean recall {np.mean(rec):.2f}, max FPR {max(fpr):.2f}")


if __name__ == "__main__":
    sys.exit(main())
