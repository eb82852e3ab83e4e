"""label_probability over OpenAI-shaped token logprobs."""

from __future__ import annotations

import math

import pytest
from langchain_core.messages import AIMessage

from agent.backends.logprobs import label_probability


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
    assert label_probability(msg) == pytest.approx(0.6 / 0.9)


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
    assert label_probability(msg) == pytest.approx(0.3 / 0.9)


def test_custom_labels():
    msg = _msg([('{"answer_label": "', 0.0, []), ("yes", math.log(0.75), [("yes", 0.75), ("no", 0.25)])])
    assert label_probability(msg, positive="yes", negative="no") == pytest.approx(0.75)


def test_none_without_logprobs_or_label():
    assert label_probability(AIMessage("anomalous")) is None
    assert label_probability(AIMessage("x", response_metadata={"logprobs": None})) is None
    msg = _msg([('{"label": "', 0.0, []), ("maybe", 0.0, [("maybe", 1.0)])])
    assert label_probability(msg) is None
