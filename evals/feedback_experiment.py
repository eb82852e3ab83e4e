"""Does feedback through `anomaly-agent serve` make later verdicts better? A fixed stream of images, with
and without feedback on each wrong verdict.

    python -m evals.feedback_experiment ../shared/data/realsets --fold dev
    python -m evals.feedback_experiment ROOT --fold dev --category kolektorsdd --seed 0

For each category: a fresh server (`python -m agent serve --backend none`, its own memory) gets the first
`--shots` normal training images (by name) as memory normals; then the category's test images of the fold
are sent one by one, in one fixed shuffled order (`--seed`), with ``references=memory``. Two arms with the
same order: **without feedback**, and **with feedback**, where every wrong verdict is followed by
``POST /v1/runs/{id}/feedback`` with the true label (a false alarm becomes a hard normal, a miss a labelled
anomaly). Prints each arm's error rate on the first and the second half of the stream, per category and
pooled. With backend none only hard normals can change a later verdict: memory normals become references
(up to `max_memory_normals`, 8, nearest first); labelled anomalies reach the model's prompt only.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

from evals.bench.serve import _free_port, _wait_ready, start_server


def _post_normals(url: str, category: str, paths: list[str]) -> None:
    import httpx

    for path in paths:
        reply = httpx.post(f"{url}/v1/memory/examples", timeout=120,
                           files={"image": (Path(path).name, Path(path).read_bytes(), "image/png")},
                           data={"category": category, "label": "normal"})
        reply.raise_for_status()


def run_arm(category, order, shots: int, feedback: bool, threads: int) -> list[dict]:
    """One fresh server; returns one row per streamed image: label, pred, wrong, feedback given."""
    import httpx

    with tempfile.TemporaryDirectory(prefix="feedback-exp-") as tmp:
        port = _free_port()
        proc = start_server(Path(tmp), port, workers=1, threads=threads)
        url = f"http://127.0.0.1:{port}"
        rows = []
        try:
            asyncio.run(_wait_ready(url, proc))
            _post_normals(url, category.name, category.train_good[:shots])
            for sample in order:
                data = Path(sample.path).read_bytes()
                reply = httpx.post(f"{url}/v1/detect", timeout=600,
                                   files={"images": (Path(sample.path).name, data, "image/png")},
                                   data={"category": category.name, "references": "memory"})
                reply.raise_for_status()
                record = reply.json()["results"][0]
                truth = "anomalous" if sample.label == 1 else "normal"
                wrong = record["pred_label"] != truth
                given = False
                if feedback and wrong:
                    fb = httpx.post(f"{url}/v1/runs/{record['run_id']}/feedback", timeout=120,
                                    json={"label": truth, "defect_type": sample.defect_type if sample.label else None})
                    given = fb.status_code == 200
                rows.append({"path": sample.path, "truth": truth, "pred": record["pred_label"],
                             "score": record["pred_score"], "wrong": wrong, "feedback": given})
        finally:
            proc.terminate()
            proc.wait(30)
    return rows


def halves(rows: list[dict]) -> tuple[float, float, int, int]:
    """(error rate of the first half, of the second half, first-half size, second-half size)."""
    mid = len(rows) // 2
    first, second = rows[:mid], rows[mid:]
    rate = lambda part: sum(r["wrong"] for r in part) / len(part) if part else float("nan")  # noqa: E731
    return rate(first), rate(second), len(first), len(second)


def main(argv: list[str] | None = None) -> int:
    from evals.datasets import load_dataset

    parser = argparse.ArgumentParser(prog="python -m evals.feedback_experiment", description=__doc__.split("\n")[0])
    parser.add_argument("root", help="dataset root (e.g. ../shared/data/realsets)")
    parser.add_argument("--fold", default="dev")
    parser.add_argument("--category", action="append", help="only this category (repeatable)")
    parser.add_argument("--shots", type=int, default=4, help="normal references in memory at the start")
    parser.add_argument("--seed", type=int, default=0, help="the stream's fixed order")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    categories = load_dataset(args.root, categories=args.category, fold=args.fold)
    table = []
    pooled = {False: [], True: []}
    started = time.perf_counter()
    for category in categories:
        order = list(category.test)
        random.Random(args.seed).shuffle(order)
        for feedback in (False, True):
            rows = run_arm(category, order, args.shots, feedback, args.threads)
            pooled[feedback].append(rows)
            first, second, n1, n2 = halves(rows)
            table.append((category.name, feedback, len(rows), first, second, sum(r["feedback"] for r in rows),
                          sum(r["feedback"] and r["truth"] == "normal" for r in rows)))
            print(f"{category.name} {'with' if feedback else 'without'} feedback: first half {first:.3f} "
                  f"(n={n1}), second half {second:.3f} (n={n2})", flush=True)
    print(f"\nrealsets-style stream, fold {args.fold}, {args.shots} normal references in memory, backend none, "
          f"order seed {args.seed}; error rate = wrong verdicts at the default threshold / images "
          f"({time.perf_counter() - started:.0f} s)\n")
    print("| category | feedback | images | error, first half | error, second half | feedback given (hard normals) |")
    print("|---|---|---|---|---|---|")
    for name, feedback, n, first, second, given, normals in table:
        print(f"| {name} | {'yes' if feedback else 'no'} | {n} | {first:.3f} | {second:.3f} | "
              f"{given if feedback else '–'}{f' ({normals})' if feedback else ''} |")
    for feedback in (False, True):
        firsts = [r for rows in pooled[feedback] for r in rows[: len(rows) // 2]]
        seconds = [r for rows in pooled[feedback] for r in rows[len(rows) // 2:]]
        f = sum(r["wrong"] for r in firsts) / len(firsts)
        s = sum(r["wrong"] for r in seconds) / len(seconds)
        given = sum(r["feedback"] for rows in pooled[feedback] for r in rows)
        print(f"| pooled | {'yes' if feedback else 'no'} | {len(firsts) + len(seconds)} | {f:.3f} | {s:.3f} | "
              f"{given if feedback else '–'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
