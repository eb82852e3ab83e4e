"""The cost of the safety policy, measured (issue 22): what "evidence-stands" costs in false alarms and what
it saves in defects, against a model that always answers "normal" with P(normal) 0.9999.

The fake vLLM server (`evals.fakeserver`, real HTTP) answers every image "normal" with P(normal) 0.9999 at
the label token: an incorrect "normal" on every anomaly, a correct "normal" on every normal image, among
them the normal images whose survey reading lies between the threshold and the margin (the band
``t <= s < sigmoid(logit t + logit 0.9)``, the near-edge false alarms the model should still clear).

Each test image of a small synthetic set (`evals.synthetic`, references from its train/good) is judged once
by the agent under the default policy, "evidence-stands", against the fake server. The same evidence and
model answer are then fused under the other rules with `agent.fusion` itself (the fusion is a pure function
of them; the agent's own score is checked to match the recomputation):

- tools-only: the survey's reading, no model;
- main's rule (before issue 22): the plain weighted fusion, plus the old dismissal jump ("tools stand"
  unless the model said "normal" at P(normal) >= 0.9);
- model-decides: the plain weighted fusion (the opt-in policy);
- evidence-stands: the default policy.

Columns: FPR and TPR at the verdicts' threshold, the FPR over the band's normal images, the clear defects
(survey reading beyond the margin) called normal, AUROC, and the disputed verdicts.

Run: ``python -m evals.bench.policy_cost [--categories fabric tray] [--n-test 12] [--size 128]``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

P_NORMAL = 0.9999
P_ANOMALOUS = 0.00005  # at the label token; the rest (0.00005) is on neither label and counts half each side
RULES = ("tools-only", "main's rule (before)", "model-decides", "evidence-stands")


@dataclass
class Item:
    category: str
    gt: int
    evidence: list
    reading: float
    agent_score: float
    threshold: float


def _answer() -> dict:
    import json

    verdict = {"label": "normal", "defect_type": None, "regions": [],
               "explanation": "The part matches the references; what stands out is lighting."}
    return {"content": json.dumps(verdict), "label_probs": {"normal": P_NORMAL, "anomalous": P_ANOMALOUS}}


def judge(root: Path, categories: list[str], n_train: int, n_test: int, size: int, seed: int) -> list[Item]:
    """Generate the set and judge every test image with the agent against the fake vLLM server."""
    from agent.api import AnomalyAgent
    from agent.config import load_config
    from agent.fusion import fuse
    from evals.fakeserver import FakeOpenAIServer
    from evals.synthetic import generate_dataset

    generate_dataset(root / "data", seed=seed, categories=categories, n_train=n_train, n_test=n_test, size=size)
    items = []
    with FakeOpenAIServer(default=_answer()) as srv:
        cfg = load_config(backend="openai", base_url=srv.base_url, model=srv.models[0], memory_path=root / "memory",
                          threads=2, max_retries=0, max_model_calls=2, policy="evidence-stands", bank_dir=root / "banks")
        agent = AnomalyAgent.from_config(cfg)
        for cat in categories:
            refs = sorted((root / "data" / cat / "train" / "good").glob("*.png"))
            for folder in sorted((root / "data" / cat / "test").iterdir()):
                for path in sorted(folder.glob("*.png")):
                    v = agent.detect(path, category=cat, references=refs)
                    if v.status != "ok":
                        msg = f"{path}: {v.error}"
                        raise RuntimeError(msg)
                    reading = fuse(v.evidence, threshold=v.threshold).score
                    items.append(Item(cat, int(folder.name != "good"), v.evidence, reading, v.pred_score, v.threshold))
    return items


def _p_anomalous() -> float:
    return P_ANOMALOUS + 0.5 * (1.0 - P_ANOMALOUS - P_NORMAL)


def main_rule(evidence, threshold: float, p_normal: float = P_NORMAL) -> float:
    """main's fusion before issue 22: the plain weighted fusion, and when the tools alone flag the query but the
    fused score falls below the threshold, the tools' score stands unless the model said "normal" at
    P(normal) >= 0.9 from log-probabilities (then the fused score counts)."""
    from agent.fusion import combine, model_term, tool_terms

    t_terms = tool_terms(evidence)
    score, tools = combine([*t_terms, model_term("normal", _p_anomalous())]), combine(t_terms)
    if tools >= threshold and score < threshold and p_normal < 0.9:
        return tools
    return score


def scores_under(rule: str, item: Item) -> tuple[float, bool]:
    """(score, disputed) of one item under one rule."""
    from agent.fusion import fuse

    if rule == "tools-only":
        return item.reading, False
    if rule == "main's rule (before)":
        return main_rule(item.evidence, item.threshold), False
    r = fuse(item.evidence, "normal", _p_anomalous(), item.threshold, p_normal=P_NORMAL, policy=rule)
    return r.score, r.disputed


def table(items: list[Item]) -> tuple[list[str], list[list[str]]]:
    from agent.fusion import clearly_beyond
    from evals.metrics import image_auroc

    labels = np.array([i.gt for i in items])
    band = [i for i in items if i.gt == 0 and i.reading >= i.threshold and not clearly_beyond(i.reading, i.threshold)]
    clear = [i for i in items if i.gt == 1 and clearly_beyond(i.reading, i.threshold)]
    header = ["rule", "FPR", f"FPR in band (n={len(band)})", "TPR", f"clear defects missed (of {len(clear)})",
              "AUROC", "disputed"]
    rows = []
    for rule in RULES:
        out = {id(i): scores_under(rule, i) for i in items}
        flagged = {id(i): out[id(i)][0] >= i.threshold for i in items}
        normals = [i for i in items if i.gt == 0]
        anomalies = [i for i in items if i.gt == 1]
        fpr = sum(flagged[id(i)] for i in normals) / max(len(normals), 1)
        tpr = sum(flagged[id(i)] for i in anomalies) / max(len(anomalies), 1)
        fpr_band = (sum(flagged[id(i)] for i in band) / len(band)) if band else math.nan
        missed = sum(not flagged[id(i)] for i in clear)
        auroc = image_auroc(labels, np.array([out[id(i)][0] for i in items]))
        disputed = "-" if rule in ("tools-only", "main's rule (before)") else str(sum(out[id(i)][1] for i in items))
        rows.append([rule, f"{fpr:.3f}", f"{fpr_band:.3f}", f"{tpr:.3f}", str(missed), f"{auroc:.3f}", disputed])
    return header, rows


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def run(categories: list[str], n_train: int, n_test: int, size: int, seed: int) -> tuple[list[Item], list[str], list[list[str]]]:
    from agent.fusion import fuse

    with tempfile.TemporaryDirectory(prefix="policy-cost-") as tmp:
        items = judge(Path(tmp), categories, n_train, n_test, size, seed)
    for i in items:  # the recomputation is the agent's own fusion
        again = fuse(i.evidence, "normal", _p_anomalous(), i.threshold, p_normal=P_NORMAL).score
        assert abs(again - i.agent_score) < 1e-9, (again, i.agent_score)
    header, rows = table(items)
    return items, header, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--categories", nargs="+", default=["fabric", "tray"])
    parser.add_argument("--n-train", type=int, default=4)
    parser.add_argument("--n-test", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    items, header, rows = run(args.categories, args.n_train, args.n_test, args.size, args.seed)
    n_norm = sum(i.gt == 0 for i in items)
    print(f"{len(items)} test images ({n_norm} normal, {len(items) - n_norm} anomalous) of {', '.join(args.categories)}, "
          f"{args.n_train} references, {args.size} px, seed {args.seed}; the model answers \"normal\" at "
          f"P(normal) {P_NORMAL} on every image; threshold {items[0].threshold:.2f}")
    print_table(header, rows)
    readings = sorted((round(i.reading, 3), "anomalous" if i.gt else "normal") for i in items)
    print("survey readings: " + ", ".join(f"{s} {g[0]}" for s, g in readings))


if __name__ == "__main__":
    main()
