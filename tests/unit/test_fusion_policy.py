"""The inspection-safe fusion policy (issue 12, revised by issue 22's safety policy): query evidence only,
"uncertain" at reduced weight, and every disagreement written into the explanation."""

from __future__ import annotations

import math

import pytest
from langchain_core.messages import AIMessage

from agent.backends.logprobs import anomaly_probability, label_distribution
from agent.explain import cite_fusion, templated_explanation
from agent.fusion import MODEL_WEIGHT_LOGPROBS, fuse, model_term
from tools.types import Evidence, Region


def ev(tool, score, image_id=None, box=(10, 20, 50, 60)):
    args = {"image_id": image_id} if image_id else {}
    return Evidence(tool=tool, score=score, args=args, summary="", regions=[Region(bbox_xyxy=box, score=score)])


def verdict_message(probs: dict[str, float], label: str) -> AIMessage:
    """An AI message whose label token carries `probs` as its top alternatives (OpenAI shape)."""
    alts = [{"token": k, "logprob": math.log(p)} for k, p in probs.items()]
    content = [
        {"token": '{"label": "', "logprob": 0.0, "top_logprobs": []},
        {"token": label, "logprob": math.log(probs[label]), "top_logprobs": alts},
        {"token": '"}', "logprob": 0.0, "top_logprobs": []},
    ]
    return AIMessage(f'{{"label": "{label}"}}', response_metadata={"logprobs": {"content": content}})


def test_uncertain_mass_is_split_not_dropped():
    msg = verdict_message({"uncertain": 0.98, "anomalous": 0.015, "normal": 0.005}, "uncertain")
    dist = label_distribution(msg)
    assert dist == pytest.approx({"uncertain": 0.98, "anomalous": 0.015, "normal": 0.005})
    p = anomaly_probability(dist)
    assert p == pytest.approx(0.015 + 0.5 * 0.98)
    assert p < 0.6  # two-way renormalisation gave 0.75
    term = model_term("uncertain", p)
    assert term.weight < MODEL_WEIGHT_LOGPROBS
    mirror = anomaly_probability(label_distribution(
        verdict_message({"uncertain": 0.98, "anomalous": 0.005, "normal": 0.015}, "uncertain")))
    assert 0.4 < mirror < 0.5  # two-way gave 0.25


def test_uncertain_enters_fusion_at_reduced_weight():
    p = 0.015 + 0.5 * 0.98
    with_uncertain = fuse([ev("patch_knn", 0.2)], "uncertain", p)
    with_confident = fuse([ev("patch_knn", 0.2)], "anomalous", p)
    assert with_uncertain.terms[-1].weight < with_confident.terms[-1].weight
    assert with_uncertain.score < with_confident.score


def test_model_p_normal_0_8_cannot_dismiss_patch_knn_0_99():
    # P(normal) 0.8, P(uncertain) 0.2 at the label token: P(anomalous) = 0.5 * 0.2
    result = fuse([ev("patch_knn", 0.99)], "normal", 0.1, p_normal=0.8)
    assert result.label == "anomalous"
    (d,) = result.disagreements
    assert (d.tool, d.box, d.model_label) == ("patch_knn", (10, 20, 50, 60), "normal")
    text = cite_fusion("The surface looks clean. Nothing else.", result, 0.5)
    assert "patch_knn flagged box (10, 20, 50, 60) at 0.99" in text
    assert 'the model concluded "normal" (P(normal) 0.80 from token log-probabilities)' in text
    assert 'Disputed: the model answered "normal" (P(normal) 0.8 from token log-probabilities). Its reason: "The surface looks clean."' in text


def test_hesitant_model_plus_weak_tools_cannot_pull_a_flagged_query_below_threshold():
    tools = [ev("patch_knn", 0.99), ev("clip_similarity", 0.3), ev("reference_diff", 0.2), ev("parts_check", 0.3)]
    assert fuse(tools).label == "anomalous"
    result = fuse(tools, "normal", 0.1, p_normal=0.8)
    assert result.label == "anomalous" and result.disputed and result.stands
    assert result.tools_score == pytest.approx(0.99)  # the weak tools do not dilute patch_knn's reading
    assert [d.outcome for d in result.disagreements] == ["evidence stands"]
    text = cite_fusion("Looks fine.", result, 0.5)
    assert "The verdict stays anomalous with the measured evidence." in text
    assert 'Disputed: the model answered "normal" (P(normal) 0.8 from token log-probabilities). Its reason: "Looks fine."' in text


def test_a_confident_normal_lowers_a_near_edge_reading_and_says_so():
    """Below the margin the model keeps its use against near-edge false alarms (issue 12's dismissal, now
    continuous: no P(normal) gate)."""
    result = fuse([ev("patch_knn", 0.7), ev("clip_similarity", 0.3)], "normal", 0.02, p_normal=0.98)
    assert result.label == "normal" and result.disputed and not result.stands
    (d,) = result.disagreements
    assert d.outcome == "model prevailed"
    text = cite_fusion("A reflection, not a scratch.", result, 0.5)
    assert "took the score below the threshold" in text
    assert "the reading is not clearly beyond the threshold, so the model's answer moved the verdict to normal" in text


@pytest.mark.parametrize(("label", "p_normal"), [("normal", None), ("uncertain", None), ("uncertain", 0.0)])
def test_label_without_probabilities_or_uncertain_lowers_a_near_edge_reading_less(label, p_normal):
    tools = [ev("patch_knn", 0.6)]
    weak = fuse(tools, label, None if p_normal is None else 0.5, p_normal=p_normal)
    confident = fuse(tools, "normal", 0.02, p_normal=0.98)
    assert weak.score > confident.score
    assert weak.disagreements and weak.disagreements[0].outcome in ("evidence stands", "model prevailed")
    assert weak.disputed == (label == "normal")  # "uncertain" takes no side


def test_policy_model_decides_is_the_plain_fusion():
    tools = [ev("patch_knn", 0.99)]
    stands = fuse(tools, "normal", 0.001, p_normal=0.999)
    decides = fuse(tools, "normal", 0.001, p_normal=0.999, policy="model-decides")
    assert stands.label == "anomalous" and decides.label == "normal"
    assert stands.disputed and decides.disputed and decides.policy == "model-decides"
    assert "Policy model-decides: the weighted fusion decides, normal" in cite_fusion("Clean.", decides, 0.5)
    with pytest.raises(ValueError, match="unknown policy"):
        fuse(tools, policy="trust-me")


def test_evidence_on_references_never_enters_the_score():
    evidence = [ev("patch_knn", 0.1), ev("patch_knn", 0.97, image_id="ref0"), ev("clip_similarity", 0.95, image_id="zoom0")]
    result = fuse(evidence, query_ids={"query", "zoom0"})
    assert [(t.source, t.probability) for t in result.terms] == [("patch_knn", 0.1), ("clip_similarity", 0.95)]
    assert result.excluded == ("patch_knn on ref0 0.97",)
    assert "Left out of the score (not about the query image): patch_knn on ref0 0.97" in templated_explanation(result, evidence, 0.5)


def test_model_flag_against_quiet_tools_is_stated():
    result = fuse([ev("patch_knn", 0.2)], "anomalous", 0.9)
    (d,) = result.disagreements
    assert d.outcome == "model flagged"
    assert "patch_knn scored only 0.20" in cite_fusion("Two screws are missing.", result, 0.5)
