"""Label probabilities over OpenAI-shaped token logprobs, from the absolute mass at the label token
(issue 22: P(pos) + 0.5 (1 - P(pos) - P(neg)), never renormalised over the labels)."""

from __future__ import annotations

import math

import pytest
from langchain_core.messages import AIMessage

from agent.backends.logprobs import (
    anomaly_probability,
    label_coverage,
    label_mass,
    label_probability,
)


def _msg(tokens: list[tuple[str, float, list[tuple[str, float]]]]) -> AIMessage:
    content = [
        {"token": t, "logprob": lp, "top_logprobs": [{"token": a, "logprob": math.log(p)} for a, p in alts]}
        for t, lp, alts in tokens
    ]
    return AIMessage("".join(t for t, _, _ in tokens), response_metadata={"logprobs": {"content": content}})


def test_sums_prefix_mass_at_the_label_value_token():
    msg = _msg([
        ('{"', 0.0, []), ("label", 0.0, []), ('":', 0.0, []),
        (' "', 0.0, [(' "', 1.0)]),
        ("anom", math.log(0.5), [("anom", 0.5), ("an", 0.1), ("normal", 0.2), ("norm", 0.1), ("unclear", 0.1)]),
        ('alous"', 0.0, []),
    ])
    # anomalous 0.6, normal 0.3, the rest ("unclear") split evenly: not 0.6 / 0.9
    assert label_probability(msg) == pytest.approx(0.6 + 0.5 * 0.1)


def test_value_token_may_carry_the_opening_quote_and_case():
    msg = _msg([
        ('{"pred_label": ', 0.0, []),
        (' "Normal', math.log(0.7), [(' "Normal', 0.7), (' "An', 0.3)]),
        ('"}', 0.0, []),
    ])
    assert label_probability(msg) == pytest.approx(0.3)


def test_label_key_later_in_the_object():
    msg = _msg([
        ('{"explanation": "normal looking', 0.0, [("x", 1.0)]),
        ('", "label": "', 0.0, []),
        ("anomalous", math.log(0.9), [("anomalous", 0.9), ("normal", 0.1)]),
        ('"}', 0.0, []),
    ])
    assert label_probability(msg) == pytest.approx(0.9)


def test_bare_answer_without_json():
    msg = _msg([("Normal", math.log(0.8), [("Normal", 0.8), ("Anom", 0.2)]), (".", 0.0, [])])
    assert label_probability(msg) == pytest.approx(0.2)


def test_sampled_token_missing_from_top_list_is_counted():
    msg = _msg([('"label": "', 0.0, []), ("normal", math.log(0.6), [("anomalous", 0.3)])])
    assert label_probability(msg) == pytest.approx(0.3 + 0.5 * 0.1)


def test_custom_labels():
    msg = _msg([('{"answer_label": "', 0.0, []), ("yes", math.log(0.75), [("yes", 0.75), ("no", 0.25)])])
    assert label_probability(msg, positive="yes", negative="no") == pytest.approx(0.75)


def test_none_without_logprobs_or_label():
    assert label_probability(AIMessage("anomalous")) is None
    assert label_probability(AIMessage("x", response_metadata={"logprobs": None})) is None
    msg = _msg([('{"label": "', 0.0, []), ("maybe", 0.0, [("maybe", 1.0)])])
    assert label_probability(msg) is None


def _verdict(probs: dict[str, float], sampled: str) -> AIMessage:
    return _msg([('{"label": "', 0.0, []), (sampled, math.log(probs[sampled]), list(probs.items())), ('"}', 0.0, [])])


def test_a_real_p_normal_of_0_6_is_not_read_as_certainty():
    # the label tokens carry 0.6 + 0.05; renormalising over them gave P(normal) 0.92, P(anomalous) 0.08
    msg = _verdict({"normal": 0.6, "anomalous": 0.05, "{": 0.35}, "normal")
    mass = label_mass(msg)
    assert mass == pytest.approx({"anomalous": 0.05, "normal": 0.6, "uncertain": 0.0})
    assert anomaly_probability(mass) == pytest.approx(0.05 + 0.5 * 0.35)
    assert label_coverage(mass) == pytest.approx(0.65)


def test_three_labels_split_what_is_on_neither_side():
    mass = label_mass(_verdict({"uncertain": 0.98, "anomalous": 0.015, "normal": 0.005}, "uncertain"))
    assert anomaly_probability(mass) == pytest.approx(0.015 + 0.5 * 0.98)
    assert anomaly_probability({"anomalous": 1.0, "normal": 0.0}) == 1.0
    assert anomaly_probability({"anomalous": 0.0, "normal": 1.0}) == 0.0


def test_decide_answer_marks_a_partial_reading_and_halves_its_weight():
    from types import SimpleNamespace

    from agent.nodes.decide import ModelVerdict, _answer

    def answer(probs):
        msg = _verdict(probs, "normal")
        parsed = ModelVerdict(label="normal", explanation="looks fine")
        return _answer({}, [], None, SimpleNamespace(parsed=parsed, message=msg, repaired=False), 0.0, {})["model_answer"]

    weak = answer({"normal": 0.3, "anomalous": 0.1, "{": 0.6})
    assert (weak["score_source"], weak["weight_factor"]) == ("logprobs-partial", 0.5)
    assert weak["probability"] == pytest.approx(0.1 + 0.5 * 0.6) and weak["p_normal"] == pytest.approx(0.3)
    strong = answer({"normal": 0.45, "anomalous": 0.1, "{": 0.45})
    assert (strong["score_source"], strong["weight_factor"]) == ("logprobs", 1.0)
    bare = _answer({}, [], None, SimpleNamespace(parsed=ModelVerdict(label="normal", explanation="x"),
                                                  message=AIMessage('{"label": "normal"}'), repaired=False), 0.0, {})
    assert bare["model_answer"]["score_source"] == "label" and bare["model_answer"]["probability"] is None
