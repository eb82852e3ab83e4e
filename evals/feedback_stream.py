"""Streaming evaluation with simulated feedback: do the inspector's corrections make later verdicts better?

    python -m evals.feedback_stream ../shared/data/realsets --fold test --seed 0 --seed 1 --seed 2
    anomaly-agent eval ROOT --feedback-stream --fold test          # the same, from the CLI

Per category and seed: a run-scoped memory (a temporary folder; the user's memory is never opened) into
which the category's first `--shots` (4) training normals are imported (by name: the same for both arms); then the category's test images of the fold, in
one fixed order shuffled by the seed, are judged one at a time with ``references="memory"``, tools only.
Two arms with the same order: **without feedback**, and **with feedback**, where each wrong verdict is
followed by the truth (`agent.feedback.record_feedback`: a miss becomes a labelled anomaly the tools
compare with, a false alarm a hard normal, and the category's threshold is refit). A failed item counts
as wrong and gets no feedback.

Reported per category (macro-averaged over seeds) and pooled: error rate, recall and false-positive rate
of the first and the second half of the stream, with and without feedback, with 95% Wilson intervals on
the counts pooled over seeds; and the error curve (running error over the stream) for the HTML report.
Each row of `feedback_stream.json` also holds the image's defect type and, when a labelled anomaly raised its
score, `known_defect` (the example, the boost ratio, the raw score before and after): what feedback did to
each image can be read back without re-running; and, when hard normals were among the references,
`hard_normals` (how many, and the survey's score without them).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion k / n ((nan, nan) when n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def run_stream(category, order, feedback: bool, threads: int, shots: int = 4) -> list[dict]:
    """Judge `order` one by one against a fresh run-scoped memory holding the category's first `shots` training
    normals (by name; 0: all of them); one row per image."""
    from agent.api import AnomalyAgent
    from agent.feedback import record_feedback
    from memory.importer import TreeItem, import_items

    with tempfile.TemporaryDirectory(prefix="feedback-stream-") as tmp:
        agent = AnomalyAgent.from_config(backend="none", device="cpu", threads=threads, bank_cache=False,
                                         memory_path=Path(tmp) / "memory", max_references=32)
        rt = agent.runtime
        from memory.store import open_store

        store = open_store(rt.config)
        normals = sorted(category.train_good)[:shots] if shots else category.train_good
        items = [TreeItem(Path(p), category.name, "normal", None, None) for p in normals]
        import_items(store, rt.embedder(), items)
        rt._memory, rt._memory_checked = store, True  # the agent uses this run-scoped store
        rows = []
        for sample in order:
            truth = "anomalous" if sample.label == 1 else "normal"
            verdict = agent.detect(sample.path, category=category.name, references="memory")
            ok = verdict.status == "ok"
            wrong = (not ok) or verdict.pred_label != truth
            given = ""
            if feedback and ok and wrong:
                result = record_feedback(rt, store, sample.path, category.name, truth, verdict.pred_score,
                                         run_id=f"stream-{len(rows)}", defect_type=sample.defect_type)
                given = result.message
            known = next((ev.known_defect for ev in verdict.evidence if ev.known_defect is not None), None)
            hard = next((ev.hard_normals for ev in sorted(verdict.evidence, key=lambda e: e.tool != "survey")
                         if ev.hard_normals is not None), None)
            rows.append({"image": Path(sample.path).name, "truth": truth, "defect": sample.defect_type,
                         "pred": verdict.pred_label, "score": verdict.pred_score, "threshold": verdict.threshold,
                         "status": verdict.status, "wrong": wrong, "feedback": given,
                         "known_defect": known.model_dump() if known is not None else None,
                         "hard_normals": hard.model_dump() if hard is not None else None})
        store.close()
    return rows


def half_metrics(rows: list[dict]) -> dict:
    """Counts and rates of a part of the stream: error, recall (anomalies flagged), FPR (normals flagged)."""
    n = len(rows)
    anomalies = [r for r in rows if r["truth"] == "anomalous"]
    normals = [r for r in rows if r["truth"] == "normal"]
    caught = sum(1 for r in anomalies if r["pred"] == "anomalous" and r["status"] == "ok")
    alarms = sum(1 for r in normals if r["pred"] == "anomalous" or r["status"] != "ok")
    errors = sum(r["wrong"] for r in rows)
    return {"n": n, "errors": errors, "error": errors / n if n else float("nan"),
            "n_anomalous": len(anomalies), "caught": caught, "recall": caught / len(anomalies) if anomalies else float("nan"),
            "n_normal": len(normals), "alarms": alarms, "fpr": alarms / len(normals) if normals else float("nan")}


def halves(rows: list[dict]) -> tuple[dict, dict]:
    mid = len(rows) // 2
    return half_metrics(rows[:mid]), half_metrics(rows[mid:])


def curve(rows: list[dict], window: int = 10) -> list[float]:
    """Running error rate over the stream (moving window of `window` images)."""
    out = []
    for i in range(len(rows)):
        part = rows[max(0, i - window + 1): i + 1]
        out.append(sum(r["wrong"] for r in part) / len(part))
    return out


def evaluate(categories, seeds: list[int], threads: int, log=print, shots: int = 4) -> dict:
    """Every category x seed x arm; returns {"runs": [...], "table": [...]} (see `main` for the table)."""
    runs = []
    for category in categories:
        for seed in seeds:
            order = list(category.test)
            random.Random(seed).shuffle(order)
            for feedback in (False, True):
                t0 = time.perf_counter()
                rows = run_stream(category, order, feedback, threads, shots)
                first, second = halves(rows)
                runs.append({"category": category.name, "seed": seed, "feedback": feedback, "rows": rows,
                             "first": first, "second": second, "curve": curve(rows)})
                log(f"{category.name} seed {seed} {'with' if feedback else 'without'} feedback: second half error "
                    f"{second['error']:.3f} recall {second['recall']:.2f} FPR {second['fpr']:.2f} "
                    f"({time.perf_counter() - t0:.0f} s)")
    return {"runs": runs, "table": summarise(runs)}


def summarise(runs: list[dict]) -> list[dict]:
    """Per (category, arm): seed-macro-averaged rates of both halves, and Wilson intervals on pooled counts."""
    import numpy as np

    out = []
    keys = list(dict.fromkeys((r["category"], r["feedback"]) for r in runs))
    for cat in [*dict.fromkeys(c for c, _ in keys), "macro"]:
        for feedback in (False, True):
            sel = [r for r in runs if (cat == "macro" or r["category"] == cat) and r["feedback"] == feedback]
            if not sel:
                continue
            line = {"category": cat, "feedback": feedback, "seeds": sorted({r["seed"] for r in sel})}
            for half in ("first", "second"):
                if cat == "macro":  # mean over categories of the per-category seed means
                    cats = sorted({r["category"] for r in sel})
                    for m in ("error", "recall", "fpr"):
                        line[f"{half}_{m}"] = float(np.nanmean([np.nanmean([r[half][m] for r in sel if r["category"] == c])
                                                                for c in cats]))
                else:
                    for m in ("error", "recall", "fpr"):
                        line[f"{half}_{m}"] = float(np.nanmean([r[half][m] for r in sel]))
                errs, n = sum(r[half]["errors"] for r in sel), sum(r[half]["n"] for r in sel)
                caught, na = sum(r[half]["caught"] for r in sel), sum(r[half]["n_anomalous"] for r in sel)
                alarms, nn = sum(r[half]["alarms"] for r in sel), sum(r[half]["n_normal"] for r in sel)
                line[f"{half}_error_ci"] = wilson(errs, n)
                line[f"{half}_recall_ci"] = wilson(caught, na)
                line[f"{half}_fpr_ci"] = wilson(alarms, nn)
            out.append(line)
    return out


def print_table(table: list[dict], fold: str) -> None:
    print(f"\nfeedback stream, fold {fold}, tools only, references from a run-scoped memory of the category's "
          "training normals; macro over seeds (95% Wilson intervals on counts pooled over seeds)\n")
    print("| category | feedback | error 1st half | error 2nd half | recall 2nd half | FPR 2nd half | 2nd/without |")
    print("|---|---|---|---|---|---|---|")
    base = {t["category"]: t for t in table if not t["feedback"]}
    for t in table:
        def ci(key: str, t: dict = t) -> str:
            return f"[{t[key][0]:.2f}, {t[key][1]:.2f}]"

        ratio = ""
        if t["feedback"] and base.get(t["category"], {}).get("second_error"):
            ratio = f"{t['second_error'] / base[t['category']]['second_error']:.2f}x"
        print(f"| {t['category']} | {'yes' if t['feedback'] else 'no'} | {t['first_error']:.3f} | "
              f"{t['second_error']:.3f} {ci('second_error_ci')} | {t['second_recall']:.2f} {ci('second_recall_ci')} | "
              f"{t['second_fpr']:.2f} {ci('second_fpr_ci')} | {ratio} |")


def taught_normal(rows: list[dict]) -> tuple[int, int]:
    """(verdicts normal only because hard normals widened the references, how many of them were defects): the
    survey's score without the hard normals (`hard_normals`) was at or above the verdict's threshold."""
    taught = [r for r in rows if r.get("hard_normals") and r["pred"] == "normal"
              and r["hard_normals"]["score_without"] >= r["threshold"]]
    return len(taught), sum(r["truth"] == "anomalous" for r in taught)


def print_taught(runs: list[dict]) -> None:
    """Per category, over the seeds with feedback: the verdicts the hard normals made normal, and the defects among
    them (a hard normal that hides a defect; the explanation names it, `agent.explain.hard_normal_note`)."""
    print("\nverdicts normal only because of hard normals (with feedback, all seeds): n (defects among them)")
    for cat in dict.fromkeys(r["category"] for r in runs):
        counts = [taught_normal(r["rows"]) for r in runs if r["category"] == cat and r["feedback"]]
        print(f"- {cat}: {sum(n for n, _ in counts)} ({sum(d for _, d in counts)})")


def write_html(result: dict, path: Path, fold: str) -> None:
    """A small page: the table and each category's running error curve (seed 0), with and without feedback."""
    import html

    rows = "".join(
        f"<tr><td>{html.escape(t['category'])}</td><td>{'yes' if t['feedback'] else 'no'}</td>"
        f"<td>{t['first_error']:.3f}</td><td>{t['second_error']:.3f}</td><td>{t['second_recall']:.2f}</td>"
        f"<td>{t['second_fpr']:.2f}</td></tr>" for t in result["table"])
    svgs = []
    for cat in dict.fromkeys(r["category"] for r in result["runs"]):
        lines = []
        for run in (r for r in result["runs"] if r["category"] == cat and r["seed"] == min(x["seed"] for x in result["runs"])):
            n = max(1, len(run["curve"]) - 1)
            pts = " ".join(f"{5 + 390 * i / n:.1f},{155 - 150 * v:.1f}" for i, v in enumerate(run["curve"]))
            colour = "#c0392b" if not run["feedback"] else "#1e8449"
            lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
        svgs.append(f"<h3>{html.escape(cat)}</h3><svg width='400' height='160' style='border:1px solid #ccc'>"
                    f"{''.join(lines)}</svg>")
    path.write_text(
        "<!doctype html><meta charset='utf-8'><title>feedback stream</title>"
        f"<h1>Feedback stream, fold {html.escape(fold)}</h1><p>Running error over the stream (10 images), "
        "red: without feedback, green: with feedback.</p>"
        "<table border='1' cellpadding='4'><tr><th>category</th><th>feedback</th><th>error 1st half</th>"
        f"<th>error 2nd half</th><th>recall 2nd</th><th>FPR 2nd</th></tr>{rows}</table>{''.join(svgs)}")


def run_cli(categories, seeds: list[int], out: Path, fold: str, threads: int = 2, shots: int = 4) -> dict:
    """`eval --feedback-stream`: run, print the table, write feedback_stream.json and .html under `out`."""
    result = evaluate(categories, seeds, threads, log=lambda m: print(m, file=sys.stderr, flush=True), shots=shots)
    print_table(result["table"], fold)
    print_taught(result["runs"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "feedback_stream.json").write_text(json.dumps(result, indent=1, default=str))
    write_html(result, out / "feedback_stream.html", fold)
    print(f"wrote {out / 'feedback_stream.json'} and {out / 'feedback_stream.html'}")
    return result


def main(argv: list[str] | None = None) -> int:
    from evals.datasets import load_dataset

    parser = argparse.ArgumentParser(prog="python -m evals.feedback_stream", description=__doc__.split("\n")[0])
    parser.add_argument("root", help="dataset root (e.g. ../shared/data/realsets)")
    parser.add_argument("--fold", default="test")
    parser.add_argument("--category", action="append", help="only this category (repeatable)")
    parser.add_argument("--seed", type=int, action="append", help="stream orders (default 0, 1, 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shots", type=int, default=4, help="training normals imported (first by name; 0: all)")
    parser.add_argument("--out", type=Path, help="folder for feedback_stream.json and .html (default runs/feedback-stream)")
    args = parser.parse_args(argv)
    categories = load_dataset(args.root, categories=args.category, fold=args.fold)
    run_cli(categories, args.seed or [0, 1, 2], args.out or Path("runs") / "feedback-stream", args.fold, args.threads,
            args.shots)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
