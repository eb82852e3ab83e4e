"""The written safety policy (issue 22, item 1): measured evidence stands, the model may lower a clearly
flagged reading only within the anomalous side, a confident "normal" still lowers near-edge readings,
incidental tools never dilute, the score is monotone, and a disputed verdict says why."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.explain import cite_fusion
from agent.fusion import STANDS_MARGIN, clearly_beyond, fuse, stands_floor
from agent.survey_fusion import survey_evidence
from tools.types import Evidence, Region

INCIDENTAL = 0.047  # what a tool that measures nothing calibrates to (issue 22)
REASON = "The surface matches the references; the dark spot is dust on the lens."


def ev(tool, score, stage=None, box=(10, 20, 50, 60)):
    args = {"image_id": "query", **({"stage": stage} if stage else {})}
    return Evidence(tool=tool, score=score, args=args, summary="", regions=[Region(bbox_xyxy=box, score=score)])


WEIGHTS = {"reference_diff": 0.5, "parts_check": 0.5}  # an opted-in survey (`survey_weights`)


def surveyed(patch_knn, reference_diff=0.2, parts_check=0.3, weights=WEIGHTS):
    """The survey's evidence as `agent.nodes.survey` records it: the parts (stage "survey") and the reading."""
    parts = [ev("patch_knn", patch_knn, "survey"), ev("reference_diff", reference_diff, "survey"),
             ev("parts_check", parts_check, "survey")]
    return [*parts, survey_evidence(parts, "query", 4, weights)]


def logit(p):
    return math.log(p / (1 - p))


# (label, P(anomalous) from logprobs or None, P(normal) or None)
NORMAL_ANSWERS = [
    ("normal", None, None),  # a label without probabilities
    ("normal", 0.1, 0.8),  # P(normal) 0.8, P(uncertain) 0.2
    ("normal", 0.005, 0.99),
    ("normal", 0.00005, 0.9999),  # P(normal) = 0.9999
]


@pytest.mark.parametrize("with_survey", [True, False], ids=["survey", "no-survey"])
@pytest.mark.parametrize(("label", "probability", "p_normal"), NORMAL_ANSWERS,
                         ids=["label-only", "p_normal-0.8", "p_normal-0.99", "p_normal-0.9999"])
def test_patch_knn_0_99_two_incidental_tools_and_a_normal_answer_stay_anomalous(with_survey, label, probability, p_normal):
    base = surveyed(0.99) if with_survey else [ev("patch_knn", 0.99)]
    evidence = [*base, ev("clip_similarity", INCIDENTAL), ev("zoom_similarity", INCIDENTAL)]
    result = fuse(evidence, label, probability, p_normal=p_normal, query_ids={"query"})
    assert result.label == "anomalous" and result.score >= 0.5
    assert result.stands and result.disputed and result.policy == "evidence-stands"
    survey = base[-1].score  # the survey's fused reading (patch_knn 0.99 alone: its bounded log-odds, 0.97)
    assert result.reading == pytest.approx(survey)  # the incidental tools did not dilute it (main: 0.48)
    text = cite_fusion(REASON, result, 0.5)
    assert text.startswith(REASON)
    assert f'Its reason: "{REASON.split(";")[0]}' in text or f'Its reason: "{REASON}"' in text
    assert "Disputed: the model answered \"normal\"" in text
    assert f"The measured evidence reads {survey:.2f}" in text and "clearly beyond it" in text
    assert "the measured evidence stands; the model may lower the score only within the anomalous side" in text
    if p_normal is not None:
        assert f"P(normal) {p_normal:.4g}" in text
    else:
        assert "a label without probabilities" in text


def test_the_model_lowers_a_clear_reading_only_within_the_anomalous_side():
    evidence = surveyed(0.999)
    alone = fuse(evidence).score
    told_normal = fuse(evidence, "normal", 1e-6, p_normal=1 - 1e-6)
    assert 0.5 <= told_normal.score < alone  # lowered, still anomalous
    assert told_normal.score == pytest.approx(stands_floor(alone, 0.5))


def test_the_margin_is_relative_to_a_refit_threshold():
    reading = [ev("patch_knn", 0.95)]
    assert fuse(reading, "normal", 1e-4, p_normal=0.9999, threshold=0.5).label == "anomalous"  # 0.95 >= 0.9
    refit = fuse(reading, "normal", 1e-4, p_normal=0.9999, threshold=0.8)  # margin: sigmoid(logit 0.8 + logit 0.9) = 0.973
    assert not refit.stands and refit.label == "normal" and refit.disputed
    high = fuse([ev("patch_knn", 0.99)], "normal", 1e-4, p_normal=0.9999, threshold=0.8)
    assert high.stands and high.label == "anomalous" and high.score >= 0.8


def test_the_score_no_longer_jumps_backwards():
    """issue 22's table: patch_knn 0.6 against the model's P(anomalous) 0.10, 0.11, 0.45 gave 0.306, 0.600, 0.526."""
    grid = [i / 1000 for i in range(1, 1000)]
    scores = [fuse([ev("patch_knn", 0.6)], "normal" if p < 0.5 else "anomalous", p, p_normal=1 - p).score for p in grid]
    assert scores == sorted(scores)
    assert scores[grid.index(0.11)] - scores[grid.index(0.1)] < 0.02  # main: +0.29
    assert scores[grid.index(0.1)] < scores[grid.index(0.11)] < scores[grid.index(0.45)]


def test_a_down_weighted_tool_on_its_own_never_forces_a_verdict():
    clip = [ev("clip_similarity", 0.999)]  # zero-shot: the survey is CLIP alone
    result = fuse(clip, "normal", 1e-4, p_normal=0.9999)
    assert not result.anchored and not result.stands and result.floor is None
    assert result.label == "normal" and result.disputed


HEAVY = {"reference_diff": 2.0, "parts_check": 0.5}


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_one_down_weighted_survey_part_on_its_own_never_forces_a_verdict(threshold):
    """reference_diff at weight 2 adds up to 2 L ~ 9.2 nats to the survey, far more than logit(0.9): with
    patch_knn's survey reading at the threshold and parts_check quiet, the survey's reading is beyond the
    margin, yet it does not stand on that one part."""
    from agent.fusion import LOGIT_BOUND

    at_threshold = 1 / (1 + math.exp(-LOGIT_BOUND * math.sinh(logit(threshold) / LOGIT_BOUND)))  # survey reads t
    evidence = surveyed(at_threshold, reference_diff=1 - 1e-9, parts_check=0.2, weights=HEAVY)
    result = fuse(evidence, "normal", 1e-4, threshold, p_normal=0.9999, query_ids={"query"}, survey_weights=HEAVY)
    assert clearly_beyond(result.reading, threshold)  # the survey's reading itself
    assert not result.stands and result.standing < result.reading
    assert result.floor < threshold and result.disputed  # nothing holds it on the anomalous side
    if threshold >= 0.5:  # (at a low threshold the log-odds mean of reading and model stays above it)
        assert result.label == "normal"
    both = fuse(surveyed(at_threshold, reference_diff=1 - 1e-9, parts_check=0.99, weights=HEAVY), "normal", 1e-4, threshold,
                p_normal=0.9999, query_ids={"query"}, survey_weights=HEAVY)
    assert both.stands and both.label == "anomalous"  # two tools together do
    lead = fuse(surveyed(0.6 if threshold < 0.6 else 0.9, reference_diff=0.7, weights=HEAVY), "normal", 1e-4, threshold,
                p_normal=0.9999, query_ids={"query"}, survey_weights=HEAVY)
    assert lead.standing == pytest.approx(lead.reading)  # a part under the cap counts fully


def test_incidental_tools_can_raise_the_reading():
    evidence = [*surveyed(0.6), ev("parts_check", 0.99)]
    assert fuse(evidence).score > fuse(surveyed(0.6)).score


# ---- properties -------------------------------------------------------------------------------------

prob = st.floats(min_value=1e-6, max_value=1 - 1e-6, allow_nan=False)
INCIDENTAL_TOOLS = ["clip_similarity", "parts_check", "reference_diff", "zoom_similarity"]


@st.composite
def cases(draw):
    """A survey (or a bare patch_knn, or only down-weighted tools), incidental tools, a model answer, a threshold."""
    kind = draw(st.sampled_from(["survey", "patch_knn", "down-weighted"]))
    scores = {}
    if kind == "survey":
        scores |= {"s:patch_knn": draw(prob), "s:reference_diff": draw(prob), "s:parts_check": draw(prob)}
    elif kind == "patch_knn":
        scores["patch_knn"] = draw(prob)
    for tool in draw(st.lists(st.sampled_from(INCIDENTAL_TOOLS), unique=True, min_size=kind == "down-weighted", max_size=3)):
        scores[tool] = draw(prob)
    label = draw(st.sampled_from(["normal", "anomalous", "uncertain", None]))
    with_logprobs = draw(st.booleans())
    p = draw(prob) if label is not None and with_logprobs else None
    factor = draw(st.sampled_from([1.0, 0.5]))
    threshold = draw(st.floats(min_value=0.05, max_value=0.95))
    policy = draw(st.sampled_from(["evidence-stands", "model-decides"]))
    return scores, label, p, factor, threshold, policy


PROPERTY_WEIGHTS = {"reference_diff": 2.0, "parts_check": 0.5}  # one part heavier than logit(0.9) alone


def evidence_of(scores):
    parts = [ev(k[2:], v, "survey") for k, v in scores.items() if k.startswith("s:")]
    out = [*parts, survey_evidence(parts, "query", 4, PROPERTY_WEIGHTS)] if parts else []
    return out + [ev(k, v) for k, v in scores.items() if not k.startswith("s:")]


def run(scores, label, p, factor, threshold, policy):
    if label is None and p is not None:
        p = None
    return fuse(evidence_of(scores), label, p, threshold, policy=policy, query_ids={"query"},
                model_weight_factor=factor, survey_weights=PROPERTY_WEIGHTS)


@settings(max_examples=300, deadline=None)
@given(cases(), st.data())
def test_fused_score_is_monotone_in_every_tool_score(case, data):
    scores, label, p, factor, threshold, policy = case
    key = data.draw(st.sampled_from(sorted(scores)))
    higher = data.draw(st.floats(min_value=scores[key], max_value=1 - 1e-6))
    before = run(scores, label, p, factor, threshold, policy).score
    after = run({**scores, key: higher}, label, p, factor, threshold, policy).score
    assert after >= before - 1e-12


@settings(max_examples=300, deadline=None)
@given(cases(), st.data())
def test_fused_score_is_monotone_in_the_models_p_anomalous(case, data):
    scores, label, _, factor, threshold, policy = case
    label = label if label is not None else "normal"
    lo = data.draw(prob)
    hi = data.draw(st.floats(min_value=lo, max_value=1 - 1e-6))
    assert run(scores, label, hi, factor, threshold, policy).score >= run(scores, label, lo, factor, threshold, policy).score - 1e-12
    if label != "uncertain":  # labels without probabilities: "normal" (0.15) below "anomalous" (0.85)
        assert run(scores, "anomalous", None, factor, threshold, policy).score >= run(scores, "normal", None, factor, threshold, policy).score - 1e-12


@settings(max_examples=300, deadline=None)
@given(cases())
def test_a_reading_beyond_the_margin_stands_whatever_the_model_says(case):
    scores, label, p, factor, threshold, _ = case
    result = run(scores, label, p, factor, threshold, "evidence-stands")
    if result.anchored and clearly_beyond(result.standing, threshold):
        assert result.stands and result.label == "anomalous" and result.score >= threshold
    if result.anchored:  # the model lowers the reading by at most logit(0.9) in log-odds
        assert result.score >= stands_floor(result.standing, threshold) - 1e-12
        assert result.standing <= result.reading + 1e-12
        if not any(k in scores for k in ("s:reference_diff", "s:parts_check")) or len(scores) == 0:
            assert result.standing == pytest.approx(result.reading)


@settings(max_examples=300, deadline=None)
@given(cases())
def test_incidental_tools_never_lower_the_score_below_the_surveys(case):
    scores, label, p, factor, threshold, policy = case
    if not any(k.startswith("s:") for k in scores) or policy != "evidence-stands":
        return
    survey_only = {k: v for k, v in scores.items() if k.startswith("s:")}
    with_incidental = run(scores, label, p, factor, threshold, policy)
    without = run(survey_only, label, p, factor, threshold, policy)
    assert with_incidental.score >= without.score - 1e-12
    assert run(scores, None, None, factor, threshold, policy).score >= run(survey_only, None, None, factor, threshold, policy).score - 1e-12


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0.5, max_value=0.9 - 1e-6), st.floats(min_value=1e-6, max_value=0.01))
def test_below_the_margin_a_confident_normal_lowers_the_reading(reading, p_anomalous):
    result = fuse([ev("patch_knn", reading)], "normal", p_anomalous, p_normal=1 - p_anomalous)
    assert not result.stands
    assert result.score < reading  # it lowers the reading
    assert result.label == "normal" and result.disputed  # and at threshold 0.5 it takes it across


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0.05, max_value=0.95), st.floats(min_value=1e-6, max_value=1 - 1e-6))
def test_the_floor_is_continuous_at_the_margin(threshold, p_anomalous):
    at = 1 / (1 + math.exp(-(logit(threshold) + STANDS_MARGIN)))
    below, above = (fuse([ev("patch_knn", at + d)], "normal", p_anomalous, threshold).score for d in (-1e-9, 1e-9))
    assert abs(above - below) < 1e-6


# ---- the setting ------------------------------------------------------------------------------------


def test_policy_setting_defaults_to_evidence_stands_and_refuses_others(monkeypatch):
    from agent.config import ConfigError, load_config

    assert load_config().policy == "evidence-stands"
    assert load_config(policy="model-decides").policy == "model-decides"
    monkeypatch.setenv("ANOMALY_AGENT_POLICY", "model-decides")
    assert load_config().policy == "model-decides"
    with pytest.raises(ConfigError, match="policy"):
        load_config(policy="trust-the-model")


@pytest.mark.parametrize("command", ["detect", "eval", "serve"])
def test_policy_flag_on_detect_eval_and_serve(command):
    from typer.testing import CliRunner

    from agent.cli import app

    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
    assert "--policy" in out and "model-decides" in out
