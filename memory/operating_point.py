"""Per-category operating point: a decision threshold refit from the inspector's labelled verdicts.

Every labelled verdict (feedback "right" or "wrong" on a run: the image's fused score and its true label)
is recorded per category. The threshold is refit after each one, in log-odds u = logit(t), minimising

    W * sum_normal softplus((u_i - u) / TAU) + sum_anomalous softplus((u - u_j) / TAU) + PRIOR * (u - u_0)^2

over a fine grid, where u_0 = logit(0.5) is the calibrated edge of normal (the tools' 0.5 means "at the
edge of what the normal references show"): with few labels the prior holds the threshold near the edge,
and it moves as labels accumulate. One label moves the threshold by at most `MAX_STEP` nats, so a single
click never swings the line, and only its own way (`ThresholdPolicy.one_way`): a missed anomaly never raises
the line, a false alarm never lowers it. A bounded step can leave the line short of its fit; without the rule
the next label finished that move even against itself (dev feedback stream, 2026-12-04: a missed elpv_mono
cell raised the line 0.62 -> 0.73, and the page said so). Adopting it there: elpv_mono's second-half error
0.111 -> 0.097 and recall 0.88 -> 0.91, every other category unchanged; on fold test nothing changed. The
history of every move is kept; removing a label (undo) refits by replaying the remaining labels in order, so
its effect is reverted exactly.

W = `NORMAL_WEIGHT` = 3: a false alarm costs three misses. Feedback comes mostly from misses (each pulls the
line down); with W = 1 the line sank until a quarter of a category's normals were flagged (realsets dev
feedback stream, 2026-12-04: magnetic_tile FPR 0.24). W = 3 was the only weight of {1, 2, 3} that kept every
dev category's FPR at or below 0.15 (magnetic_tile 0.14), at an error cost of +0.015 there and on elpv.

The threshold never goes below `MIN_THRESHOLD` = sigmoid(1 - Z_EDGE) = 0.12: the calibrated score of a raw
score one spread above the references' median (`tools.calibration`). Below it the line would flag a good
share of images that look like the references themselves (about one in six if their scores spread normally),
so it chases misses the tools cannot separate from normal. Only misses push the line down (feedback arrives
on wrong verdicts; the many right ones below the line are never labelled), so without the floor a category
whose defects score below its references sank there: kolektorsdd's line fell to 0.03-0.08 and flagged 22%
of its normals (realsets fold test, stop 26). Chosen on the dev feedback stream's threshold replay
(`evals.threshold_replay`, 2026-12-04) from floors at 1, 1.5 and 2 spreads: 1 spread lowered kolektorsdd's
error (0.174 -> 0.159) and FPR (0.10 -> 0.06) and changed no other category.

Stored as one JSON file beside the memory store (`operating_points_path`), written atomically.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tools.calibration import Z_EDGE

DEFAULT_THRESHOLD = 0.5
TAU = 0.5  # nats: how soft the error count is around each labelled score
PRIOR = 0.5  # pull toward the calibrated edge, per nat^2 (about two labels' worth near the edge)
MAX_STEP = 0.5  # nats one label may move the threshold
NORMAL_WEIGHT = 3.0  # a normal above the line costs this many anomalies below it (see the module docstring)
U_RANGE = 6.0  # thresholds searched within logit +- this
_lock = threading.Lock()


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _sigmoid(u: float) -> float:
    return 1.0 / (1.0 + math.exp(-u))


def score_at_spreads(z: float) -> float:
    """The calibrated score of a raw score `z` spreads above the references' median (`tools.calibration`)."""
    return _sigmoid(z - Z_EDGE)


MIN_THRESHOLD = score_at_spreads(1.0)  # 0.12: the lowest line labels can set (the module docstring)


def _softplus(x: float) -> float:
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


@dataclass(frozen=True)
class ThresholdPolicy:
    """How labels move a threshold (the module docstring's cost).

    `prior` per nat^2 toward the edge, `tau` nats of softness, `max_step` nats per label, `normal_weight`,
    the cost of a normal above the line relative to an anomaly below it (1: both errors count alike),
    `min_threshold`, the lowest line labels can set (probability; 0: no floor), and `one_way`: a label never
    moves the line away from its own side (a missed anomaly never raises it, a false alarm never lowers it).
    The shipped values are the module's constants; `evals.threshold_replay` compares policies.
    """

    prior: float = PRIOR
    tau: float = TAU
    max_step: float = MAX_STEP
    normal_weight: float = NORMAL_WEIGHT
    min_threshold: float = MIN_THRESHOLD
    one_way: bool = True


SHIPPED_POLICY = ThresholdPolicy()


def fit_threshold(labelled: list[tuple[str, float]], u0: float = 0.0,
                  policy: ThresholdPolicy = SHIPPED_POLICY) -> float:
    """The threshold (probability) minimising the policy's cost over (label, score) pairs, never below the
    policy's `min_threshold` (the cost is convex in u, so this is the unconstrained fit clipped to the floor)."""
    us = [(label, _logit(score)) for label, score in labelled]
    low = max(-U_RANGE, _logit(policy.min_threshold)) if policy.min_threshold > 0 else -U_RANGE
    best_u, best_cost = max(u0, low), float("inf")
    steps = 481
    for i in range(steps):
        u = low + (U_RANGE - low) * i / (steps - 1)
        cost = policy.prior * (u - u0) ** 2
        for label, ui in us:
            if label == "normal":
                cost += policy.normal_weight * _softplus((ui - u) / policy.tau)
            else:
                cost += _softplus((u - ui) / policy.tau)
        if cost < best_cost - 1e-12:
            best_u, best_cost = u, cost
    return _sigmoid(best_u)


def next_threshold(current: float, labelled: list[tuple[str, float]],
                   policy: ThresholdPolicy = SHIPPED_POLICY) -> float:
    """The threshold after the last of `labelled` (label, score) pairs: toward their fit, by at most max_step.

    With `policy.one_way` the step only goes the last label's way: down (or nowhere) after an anomaly, up (or
    nowhere) after a normal. The bounded step can leave the line short of its fit, and the next label would
    otherwise finish that move even against itself: a missed defect making the line less sensitive.
    """
    u = _logit(current)
    target = _logit(fit_threshold(labelled, policy=policy))
    step = max(-policy.max_step, min(policy.max_step, target - u))
    if policy.one_way and labelled:
        step = min(step, 0.0) if labelled[-1][0] == "anomalous" else max(step, 0.0)
    return _sigmoid(u + step)


def replay(labels: list[dict], policy: ThresholdPolicy = SHIPPED_POLICY) -> tuple[float, list[dict]]:
    """Thresholds after each label in order, each move bounded by the policy's max_step: (final threshold,
    history)."""
    threshold = DEFAULT_THRESHOLD
    history = []
    for i, rec in enumerate(labels):
        new = next_threshold(threshold, [(r["label"], r["score"]) for r in labels[: i + 1]], policy)
        history.append({"after": rec["id"], "label": rec["label"], "score": rec["score"],
                        "from": round(threshold, 4), "to": round(new, 4), "at": rec.get("at")})
        threshold = new
    return threshold, history


@dataclass
class OperatingPoint:
    """A category's threshold, how many labels it rests on, and its history (one entry per label)."""

    category: str
    threshold: float
    n_normal: int
    n_anomalous: int
    history: list[dict]

    @property
    def refit(self) -> bool:
        """Does the threshold rest on labels (vs the default)?"""
        return bool(self.history)

    def as_dict(self) -> dict:
        """The threshold, the labels it rests on and its history, as JSON (the CLI's and the API's shape)."""
        return {"threshold": self.threshold, "n_normal": self.n_normal, "n_anomalous": self.n_anomalous,
                "history": self.history}


class OperatingPoints:
    """The per-category labels and thresholds in one JSON file (thread-safe within a process; atomic writes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"categories": {}}
        except (OSError, ValueError) as exc:
            msg = f"the operating-point file {self.path} is unreadable ({exc}). Fix: delete it to start over"
            raise ValueError(msg) from None

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".op-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.path)

    def categories(self) -> list[str]:
        """The categories with labelled verdicts, sorted."""
        return sorted(c for c, labels in self._read()["categories"].items() if labels)

    def listed(self, category: str | None = None) -> list[OperatingPoint]:
        """`category`'s operating point (a normalised name), or, with None, every category's that has labels."""
        return [self.get(c) for c in ([category] if category else self.categories())]

    def get(self, category: str) -> OperatingPoint:
        """The category's operating point (the default threshold when it has no labels)."""
        labels = self._read()["categories"].get(category, [])
        threshold, history = replay(labels)
        return OperatingPoint(category, threshold, sum(r["label"] == "normal" for r in labels),
                              sum(r["label"] == "anomalous" for r in labels), history)

    def add(self, category: str, example_id: str, label: str, score: float) -> tuple[OperatingPoint, OperatingPoint]:
        """Record a labelled verdict (replacing an earlier one of the same example): (before, after)."""
        if label not in ("normal", "anomalous"):
            msg = f"label must be 'normal' or 'anomalous', got {label!r}"
            raise ValueError(msg)
        if not 0.0 <= float(score) <= 1.0:
            msg = f"score must be in [0, 1], got {score!r}"
            raise ValueError(msg)
        with _lock:
            before = self.get(category)
            data = self._read()
            labels = [r for r in data["categories"].get(category, []) if r["id"] != example_id]
            labels.append({"id": example_id, "label": label, "score": float(score),
                           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            data["categories"][category] = labels
            self._write(data)
            return before, self.get(category)

    def remove(self, example_id: str) -> list[tuple[OperatingPoint, OperatingPoint]]:
        """Take an example's label out of every category (undo): [(before, after)] per category it was in."""
        out = []
        with _lock:
            data = self._read()
            for category, labels in data["categories"].items():
                kept = [r for r in labels if r["id"] != example_id]
                if len(kept) != len(labels):
                    before = self.get(category)
                    data["categories"][category] = kept
                    self._write(data)
                    out.append((before, self.get(category)))
        return out


def operating_points_path(memory_path: str | Path | None, memory_host: str | None = None, port: int = 8000) -> Path:
    """Where a memory's operating points live: beside the embedded store's folder, or per server under the home."""
    if memory_host:
        home = Path(os.environ.get("ANOMALY_AGENT_HOME", "~/.cache/anomaly-agent")).expanduser()
        return home / f"operating-points-{memory_host}-{port}.json"
    path = Path(memory_path or "~/.cache/anomaly-agent/memory").expanduser()
    return path.parent / f"{path.name}-operating-points.json"


def describe_move(category: str, before: OperatingPoint, after: OperatingPoint, label: str | None = None) -> str:
    """"the 'gasket' threshold moved 0.50 -> 0.31" (or stayed), saying so when it rests on its floor, and, when
    `label` (the label just given) left it where it was because the line moves only that label's way, why."""
    floor = (", its floor: lower, it would flag images that score like the references themselves"
             if after.threshold <= MIN_THRESHOLD + 1e-6 else "")
    if abs(before.threshold - after.threshold) < 0.005:
        why = ""
        if label is not None and not floor and after.history:
            target = fit_threshold([(h["label"], h["score"]) for h in after.history])
            if label == "anomalous" and target > after.threshold + 0.005:
                why = (f": the labels so far put it higher ({target:.2f}: the false alarms weigh more), and a "
                       "missed defect never raises it")
            elif label == "normal" and target < after.threshold - 0.005:
                why = (f": the labels so far put it lower ({target:.2f}: the missed defects), and a normal "
                       "never lowers it")
        return f"the '{category}' threshold stayed at {after.threshold:.2f}{floor}{why}"
    return f"the '{category}' threshold moved {before.threshold:.2f} -> {after.threshold:.2f}{floor}"
