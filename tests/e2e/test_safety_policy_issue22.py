"""The held-out safety check of issue 22 against the fake vLLM server (real HTTP, real tools): defects whose
tools-only verdict scores >= 0.9 stay anomalous when the model (a) calls the incidental tools and answers
"normal", or (b) answers "normal" with P(normal) 0.9999; each verdict says that the model disagreed, and why."""

from __future__ import annotations

import pytest

from agent.api import AnomalyAgent
from agent.config import load_config
from evals.fakeserver import FakeOpenAIServer
from tests.agent_fixtures import defect_set, verdict_json

REASON = "The dark ellipse is a shadow of the fixture, not a defect of the part."
INCIDENTAL_CALLS = {"tool_calls": [{"name": "parts_check", "arguments": {}, "id": "p1"},
                                   {"name": "reference_diff", "arguments": {}, "id": "r1"},
                                   {"name": "clip_similarity", "arguments": {}, "id": "c1"}]}


def _cfg(srv, tmp_path, **kw):
    return load_config(backend="openai", base_url=srv.base_url, model=srv.models[0],
                       memory_path=tmp_path / "no-memory", threads=2, max_retries=0, **kw)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """References and the defects whose tools-only verdict scores at least 0.9."""
    refs, scores = defect_set(tmp_path_factory.mktemp("held-out"), 4, range(300, 305))
    clear = [p for p, s in scores.items() if s >= 0.9]
    assert len(clear) >= 3, scores
    return refs, clear


def _check_disputed(verdicts, model_view):
    assert [v.pred_label for v in verdicts] == ["anomalous"] * len(verdicts), [v.explanation for v in verdicts]
    for v in verdicts:
        assert v.status == "ok" and v.disputed and v.policy == "evidence-stands"
        assert v.pred_score >= v.threshold
        assert f'Disputed: the model answered "normal" ({model_view}' in v.explanation
        assert f'Its reason: "{REASON}"' in v.explanation
        assert "The measured evidence reads" in v.explanation and "clearly beyond it" in v.explanation
        assert "the measured evidence stands" in v.explanation


def test_a_model_that_calls_incidental_tools_and_answers_normal_cannot_hide_a_clear_defect(tmp_path, held_out):
    refs, paths = held_out
    answer = {"content": verdict_json("normal", REASON), "omit_logprobs": True}
    with FakeOpenAIServer(default=answer) as srv:
        agent = AnomalyAgent.from_config(_cfg(srv, tmp_path, max_model_calls=4))
        verdicts = []
        for path in paths:
            srv.push(INCIDENTAL_CALLS)
            verdicts.append(agent.detect(path, category="texture", references=refs))
        requests = list(srv.requests)
    assert any("parts_check" in r.tool_names for r in requests)
    _check_disputed(verdicts, "a label without probabilities")
    for v in verdicts:  # the incidental calls were made and are on record beside the survey's reading
        assert v.score_source == "label"
        incidental = [e for e in v.evidence if (e.args or {}).get("stage") != "survey" and e.tool != "survey"]
        assert {e.tool for e in incidental} >= {"parts_check", "reference_diff"}, [e.tool for e in v.evidence]


@pytest.mark.parametrize("policy", ["evidence-stands", "model-decides"])
def test_a_normal_at_p_normal_0_9999_cannot_hide_a_clear_defect(tmp_path, held_out, policy):
    refs, paths = held_out
    answer = {"content": verdict_json("normal", REASON), "label_probs": {"normal": 0.9999, "anomalous": 0.00005}}
    with FakeOpenAIServer(default=answer) as srv:
        agent = AnomalyAgent.from_config(_cfg(srv, tmp_path, max_model_calls=2, policy=policy))
        verdicts = [agent.detect(p, category="texture", references=refs) for p in paths]
    assert all(v.score_source == "logprobs" and v.disputed and v.policy == policy for v in verdicts)
    if policy == "evidence-stands":
        _check_disputed(verdicts, "P(normal) 0.9999 from token log-probabilities")
        assert all(v.pred_score >= 0.75 for v in verdicts), [v.pred_score for v in verdicts]
    else:  # the opt-in policy lets the confident model pull the same defects to a coin flip (issue 22: 0.51-0.52)
        assert all(v.pred_score < 0.6 for v in verdicts), [v.pred_score for v in verdicts]
        assert all("Policy model-decides: the weighted fusion decides" in v.explanation for v in verdicts)
