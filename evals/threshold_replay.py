"""Replay a feedback stream's scores under other threshold policies: what the threshold refit alone can do.

    python -m evals.feedback_stream ../shared/data/realsets --fold dev --out runs/fs-dev   # minutes
    python -m evals.threshold_replay runs/fs-dev/feedback_stream.json                      # seconds

The stream's *without feedback* arm holds every image's score against the category's first normals, in each
seed's order. Here each of those streams is replayed with feedback that only refits the threshold
(`memory.operating_point.next_threshold`, stepped as `replay` steps, under a `ThresholdPolicy`). The scores
stay fixed, so what the real *with feedback* arm adds is left out: hard normals widening the bank and known
defects raising scores. Measured 2026-12-04 on realsets: on test it reproduced the real arm's kolektorsdd
row (error 0.217 in both), where the threshold is the whole effect; on dev the real arm does far better
than the threshold alone (macro error ratio 0.49x against 0.85x, shipped policy), so a policy chosen here
must be checked with the real stream.

Policies: the shipped one first, then the shipped one with each of `FLOORS` as its lowest threshold (no floor;
one, 1.5 and 2 spreads above the references' median: the grid that chose the shipped floor), then the shipped
one with `one_way` flipped (a label may move the line against its own side), then a declared
grid of prior, tau, max_step and normal_weight (at the shipped floor). Per policy:
second-half error, recall and FPR per category (macro over seeds), the mean ratio of error with / without
feedback, and the largest FPR. A failed item (no score) stays wrong and gets no feedback, as in the stream.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from collections import defaultdict
from pathlib import Path

from memory.operating_point import (
    DEFAULT_THRESHOLD,
    SHIPPED_POLICY,
    ThresholdPolicy,
    next_threshold,
    score_at_spreads,
)

GRID = dict(prior=(0.5, 1.0, 2.0), tau=(0.5, 1.0), max_step=(0.25, 0.5), normal_weight=(1.0, 1.5, 2.0, 3.0, 5.0))
FLOORS = (0.0, *(score_at_spreads(z) for z in (1.0, 1.5, 2.0)))  # 0, 0.12, 0.18, 0.27


def replay_stream(rows: list[dict], policy: ThresholdPolicy) -> list[dict]:
    """The rows judged again in order, the threshold refit by `policy` after each wrong verdict (scores fixed)."""
    labels: list[tuple[str, float]] = []
    threshold = DEFAULT_THRESHOLD
    out = []
    for row in rows:
        ok = row["status"] == "ok" and row["score"] is not None
        pred = ("anomalous" if row["score"] >= threshold else "normal") if ok else None
        wrong = (not ok) or pred != row["truth"]
        out.append({**row, "pred": pred, "threshold": threshold, "wrong": wrong})
        if ok and wrong:
            labels.append((row["truth"], float(row["score"])))
            threshold = next_threshold(threshold, labels, policy)  # as `replay` steps
    return out


def second_half(rows: list[dict]) -> tuple[float, float, float]:
    """(error, recall, FPR) of the second half of a stream (as `evals.feedback_stream.halves`)."""
    from evals.feedback_stream import halves

    half = halves(rows)[1]
    return half["error"], half["recall"], half["fpr"]


def score_policy(streams: dict[str, list[list[dict]]], policy: ThresholdPolicy | None) -> dict[str, tuple]:
    """Per category, the seed-mean (error, recall, FPR) of the second half (policy None: no feedback)."""
    out = {}
    for category, runs in streams.items():
        per_seed = [second_half(rows if policy is None else replay_stream(rows, policy)) for rows in runs]
        out[category] = tuple(sum(m[i] for m in per_seed) / len(per_seed) for i in range(3))
    return out


def without_feedback_streams(result: dict) -> dict[str, list[list[dict]]]:
    """Per category, the without-feedback arm's rows of every seed (in the stream's order)."""
    streams: dict[str, list[list[dict]]] = defaultdict(list)
    for run in result["runs"]:
        if not run["feedback"]:
            streams[run["category"]].append(run["rows"])
    return dict(streams)


def policies() -> list[ThresholdPolicy]:
    """The shipped policy, its floor variants, then the declared grid (none repeated)."""
    floors = [dataclasses.replace(SHIPPED_POLICY, min_threshold=f) for f in FLOORS]
    both_ways = [dataclasses.replace(SHIPPED_POLICY, one_way=not SHIPPED_POLICY.one_way)]
    grid = [ThresholdPolicy(*values) for values in itertools.product(*GRID.values())]
    out = [SHIPPED_POLICY]
    for p in floors + both_ways + grid:
        if p not in out:
            out.append(p)
    return out


def table(result: dict) -> list[dict]:
    """One row per policy: mean error ratio with/without feedback, largest FPR, and each category's figures."""
    streams = without_feedback_streams(result)
    base = score_policy(streams, None)
    rows = []
    for policy in policies():
        got = score_policy(streams, policy)
        ratios = [got[c][0] / base[c][0] if base[c][0] > 0 else float("nan") for c in streams]
        row = {"prior": policy.prior, "tau": policy.tau, "max_step": policy.max_step,
               "normal_weight": policy.normal_weight, "floor": round(policy.min_threshold, 3),
               "one way": policy.one_way,
               "error ratio (mean)": sum(ratios) / len(ratios), "max FPR": max(got[c][2] for c in streams),
               "recall kept": all(got[c][1] >= base[c][1] - 1e-9 for c in streams)}
        for c in streams:
            row[c] = f"{got[c][0]:.3f} / {got[c][1]:.2f} / {got[c][2]:.2f}"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    from evals.bench.tools import print_table

    parser = argparse.ArgumentParser(prog="python -m evals.threshold_replay", description=__doc__.split("\n")[0])
    parser.add_argument("stream_json", type=Path, help="feedback_stream.json written by evals.feedback_stream")
    args = parser.parse_args(argv)
    result = json.loads(args.stream_json.read_text())
    streams = without_feedback_streams(result)
    base = score_policy(streams, None)
    print("without feedback, second half (error / recall / FPR): "
          + "; ".join(f"{c} {e:.3f} / {r:.2f} / {f:.2f}" for c, (e, r, f) in base.items()))
    print_table(table(result), "threshold refit alone, second half per category: error / recall / FPR "
                               "(the shipped policy first)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
