"""evals.bench.two_scales: fusions of the pooled and unpooled patch_knn, chosen leave-category-out."""

import json
import statistics

from evals.bench import two_scales
from evals.bench.lco_protocol import load


def _write(path, good_tool: dict) -> None:
    """Per category, k = 1 and 4, one draw: only `good_tool[cat]` ranks the anomalies first; the other scale,
    and the sum of the two, rank them last."""
    lines = []
    for cat, tool in good_tool.items():
        for k in (1, 4):
            for i, label in enumerate([0, 0, 0, 1, 1, 1]):
                good = 1.0 + label + 0.01 * i
                bad = 2.0 - label - 0.03 * i
                scores = {"patch_knn": good, "fine": bad} if tool == "patch_knn" else {"patch_knn": bad, "fine": good}
                lines.append({"kind": "image", "category": cat, "k": k, "draw": 0, "label": label,
                              **{t: [s, min(0.99, s / 3), 10.0] for t, s in scores.items()}})
            lines.append({"kind": "set", "category": cat, "k": k, "draw": 0,
                          "patch_knn:normal": [1.0, 1.0, 1.1, 0.9], "fine:normal": [1.0, 1.1, 0.9, 1.0]})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_each_category_is_judged_by_a_choice_made_on_the_others(tmp_path):
    _write(tmp_path / "dev.jsonl", {"a": "fine", "b": "patch_knn"})
    dev = two_scales.table(load(tmp_path / "dev.jsonl")[0])
    assert dev[("fine", "a", 4)] == 1.0 and dev[("patch_knn", "a", 4)] == 0.0 and dev[("sum", "a", 4)] == 0.0

    def best(cats):
        return max(two_scales.CANDIDATES, key=lambda n: statistics.mean(dev[(n, c, k)] for c in cats for k in (1, 4)))

    assert best(["a"]) == "fine" and best(["a", "b"]) != "fine"  # b's own data would change b's choice
    assert two_scales.choose(dev, ["a", "b"], [1, 4], "b") == "fine"
    assert two_scales.choose(dev, ["a", "b"], [1, 4], "a") == best(["b"])
    lines = two_scales.report(dev, dev, ["a", "b"], [1, 4])
    assert lines[0].startswith("| held-out category")
    assert "| b | fine | 0.000 / 1.000 | 0.000 / 1.000 |" in lines  # a's choice fails on b
    assert any(line.startswith("k=4: leave-category-out") and "(worst b -1.000)" in line for line in lines)


def test_every_candidate_is_monotone_in_each_scale():
    row = {"k": 4, "patch_knn": [1.2, 0.6, 1.0], "fine": [1.1, 0.55, 1.0],
           "_set": {"patch_knn:normal": [1.0, 1.0, 1.0, 1.0], "fine:normal": [1.0, 1.0, 1.0, 1.0]}}
    for name, score in two_scales.CANDIDATES.items():
        base = score(row)
        for tool in ("patch_knn", "fine"):
            up = {**row, tool: [row[tool][0] + 0.5, min(0.99, row[tool][1] + 0.2), 1.0]}
            assert score(up) >= base, (name, tool)
