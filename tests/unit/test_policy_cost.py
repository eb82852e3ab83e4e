"""evals.bench.policy_cost: the cost of the safety policy against a model that always answers "normal"."""

from __future__ import annotations

from evals.bench.policy_cost import RULES, Item, print_table, table
from tools.types import Evidence


def item(gt, reading):
    return Item("c", gt, [Evidence(tool="survey", score=reading, args={}, summary="")], reading, 0.0, 0.5)


def test_the_table_counts_the_band_and_the_clear_defects(capsys):
    items = [item(0, 0.1), item(0, 0.7), item(0, 0.95), item(1, 0.6), item(1, 0.97), item(1, 0.99)]
    header, rows = table(items)
    by_rule = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    assert list(by_rule) == list(RULES)
    band, clear = "FPR in band (n=1)", "clear defects missed (of 2)"
    assert by_rule["tools-only"]["FPR"] == "0.667" and by_rule["tools-only"][band] == "1.000"
    # a confident "normal" clears the near-edge false alarm under every rule with the model
    assert all(by_rule[r][band] == "0.000" for r in RULES[1:])
    # the clear defects: lost when the model decides, kept when the evidence stands
    assert by_rule["model-decides"][clear] == "2" and by_rule["main's rule (before)"][clear] == "2"
    assert by_rule["evidence-stands"][clear] == "0"
    # the cost: the normal image clearly beyond the margin stays a false alarm
    assert by_rule["evidence-stands"]["FPR"] == "0.333" and by_rule["model-decides"]["FPR"] == "0.000"
    print_table(header, rows)
    assert "evidence-stands" in capsys.readouterr().out
