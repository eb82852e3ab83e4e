"""The model path against a vLLM-like server (issue 12): image budget per request, errors by cause,
a hesitant model never hides a measured defect, labelled anomalies from memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from langchain_core.messages import HumanMessage
from PIL import Image

from agent.api import AnomalyAgent
from agent.backends.factory import build_backend
from agent.cli import main
from agent.config import load_config
from evals.fakeserver import FakeOpenAIServer
from memory.embed import default_embedder
from memory.store import ExampleInput, open_store
from tests.agent_fixtures import (
    DEFECT_BOX,
    defect_set,
    label_logprobs,
    texture,
    verdict_json,
    write_set,
)
from tools.images import load_image


def _cfg(srv, tmp_path, **kw):
    return load_config(backend="openai", base_url=srv.base_url, model=srv.models[0],
                       memory_path=tmp_path / "no-memory", threads=2, max_retries=0, **kw)


def test_zoom_heavy_run_stays_within_the_image_budget_on_every_request(tmp_path):
    images = write_set(tmp_path)
    x0, y0, x1, y1 = DEFECT_BOX
    zooms = [{"tool_calls": [{"name": "zoom", "arguments": {"box": [x0, y0, x1 + i, y1 + i]}, "id": f"z{i}"},
                             {"name": "enhance", "arguments": {"ops": ["clahe"]}, "id": f"e{i}"}]}
             for i in range(3)]
    script = [*zooms, {"content": "The blob is there in every crop."},
              {"content": verdict_json("anomalous", regions=[list(DEFECT_BOX)]),
                       "label_probs": {"anomalous": 0.9, "normal": 0.1}}]
    with FakeOpenAIServer(script=script, max_images=4) as srv:
        agent = AnomalyAgent.from_config(_cfg(srv, tmp_path, max_model_calls=8, max_images_per_request=4))
        v = agent.detect(images["bad"], category="texture", references=images["refs"], trace_dir=tmp_path / "tr")
        requests = list(srv.requests)
    assert v.status == "ok", v.error
    assert len(requests) == 5 and all(r.rejected is None for r in requests)
    counts = [len(r.images) for r in requests]
    assert max(counts) <= 4 and counts[-1] == 4  # without the budget: 4, 6, 8, 10, 10
    query = requests[0].images[0]
    assert all(np.array_equal(r.images[0], query) for r in requests)  # the query always stays
    later = json.dumps(requests[-1].messages)
    assert "image shown earlier, not sent again (at most 4 images per request)" in later
    trace = json.loads(next((tmp_path / "tr").glob("*.json")).read_text())
    dropped = [label for entry in trace["images_dropped"] for label in entry["dropped"]]
    assert "Normal reference ref0" in dropped and any(label.startswith("zoom") for label in dropped)


def test_a_400_about_images_exits_3_with_the_servers_message(tmp_path, capsys, isolated_home, monkeypatch):
    images = write_set(tmp_path)
    with FakeOpenAIServer(default={"content": verdict_json("normal")}, max_images=2) as srv:
        monkeypatch.setenv("ANOMALY_AGENT_MAX_RETRIES", "0")
        code = main(["detect", str(images["bad"]), "--refs", str(images["refs"]), "--backend", "openai",
                     "--base-url", srv.base_url, "--model", srv.models[0]])
        requests = list(srv.requests)
    err = capsys.readouterr().err
    assert code == 3
    assert "At most 2 image(s) may be provided in one prompt" in err
    assert "--limit-mm-per-prompt" in err and "max_images_per_request" in err
    assert len(requests) == 1  # no JSON-mode / text retries for a rejection that is not about response_format


def test_only_a_structured_output_400_falls_back_to_json_mode(tmp_path):
    images = write_set(tmp_path)
    reply = {"content": verdict_json("anomalous"), "label_probs": {"anomalous": 0.9, "normal": 0.1}}
    with FakeOpenAIServer(script=[reply], reject_json_schema=True) as srv:
        v = AnomalyAgent.from_config(_cfg(srv, tmp_path, max_model_calls=1)).detect(
            images["bad"], category="texture", references=images["refs"])
        kinds = [(r.body.get("response_format") or {}).get("type") for r in srv.requests]
    assert v.status == "ok", v.error
    assert kinds == ["json_schema", "json_object"]


@pytest.fixture(scope="module")
def defects(tmp_path_factory):
    """Three references and five images with a clearly measured defect (tools alone score >= 0.95)."""
    refs, scores = defect_set(tmp_path_factory.mktemp("defects"), 3, range(200, 205))
    assert all(s >= 0.95 for s in scores.values()), scores
    return refs, list(scores)


@pytest.mark.parametrize("no_logprobs", [
    {},  # logprobs asked for, but the label token carries only itself: nothing about the other labels
    {"omit_logprobs": True},  # "logprobs": null
], ids=["sampled-token-only", "null"])
def test_a_model_answering_normal_without_logprobs_never_hides_measured_defects(tmp_path, defects, no_logprobs):
    refs, paths = defects
    reply = {"content": verdict_json("normal", "Looks like the references to me."), **no_logprobs}
    with FakeOpenAIServer(default=reply) as srv:
        agent = AnomalyAgent.from_config(_cfg(srv, tmp_path, max_model_calls=1))
        verdicts = [agent.detect(p, category="texture", references=refs) for p in paths]
    assert [v.pred_label for v in verdicts] == ["anomalous"] * 5, [v.explanation for v in verdicts]
    assert all(v.pred_score >= 0.8 for v in verdicts), [v.pred_score for v in verdicts]  # main: 0.50, on the edge
    for v in verdicts:
        assert v.score_source == "label"
        assert v.disputed and v.policy == "evidence-stands"
        # patch_knn, or the survey's fused reading when survey_weights opts in the complementary tools
        assert "Disagreement: patch_knn flagged box" in v.explanation or "Disagreement: survey flagged box" in v.explanation
        assert 'the model concluded "normal" (a label without probabilities)' in v.explanation
        assert 'Its reason: "Looks like the references to me."' in v.explanation


def test_p_normal_0_8_from_logprobs_keeps_a_measured_defect_and_names_the_disagreement(tmp_path, defects):
    refs, paths = defects
    reply = {"content": verdict_json("normal", "No defect visible."), "label_probs": {"normal": 0.8, "uncertain": 0.2}}
    with FakeOpenAIServer(default=reply) as srv:
        v = AnomalyAgent.from_config(_cfg(srv, tmp_path, max_model_calls=1)).detect(
            paths[0], category="texture", references=refs)
    assert v.status == "ok" and v.score_source == "logprobs"
    assert v.pred_label == "anomalous"
    assert v.disputed
    assert 'the model concluded "normal" (P(normal) 0.80 from token log-probabilities)' in v.explanation
    assert 'Disputed: the model answered "normal" (P(normal) 0.8 from token log-probabilities). Its reason: "No defect visible."' in v.explanation


def _populate(store, embedder, root, query_vec, n_normal, n_anomalous, anomalies_nearer=False):
    """Distinct images with vectors near the query: normals nearer than anomalies (or the reverse)."""
    rng = np.random.default_rng(0)
    items = []
    for label, n, spread in (("normal", n_normal, 0.05), ("anomalous", n_anomalous, 0.6)):
        if anomalies_nearer:
            spread = 0.6 if label == "normal" else 0.05
        for i in range(n):
            path = root / f"{label}{i}.png"
            Image.fromarray(texture(1000 + i + (0 if label == "normal" else 5000))).save(path)
            vec = query_vec + spread * rng.normal(size=query_vec.shape).astype(np.float32) / np.sqrt(query_vec.size)
            items.append(ExampleInput(path, "texture", label, vec, embedder.model_id,
                                      defect_type="blob" if label == "anomalous" else None,
                                      description="a dark round blob" if label == "anomalous" else None))
    store.add_many(items)


def test_300_normals_do_not_crowd_out_5_labelled_anomalies(tmp_path):
    images = write_set(tmp_path)
    cfg = load_config(backend="scripted", memory_path=tmp_path / "memory", threads=2)
    embedder = default_embedder(cfg.tool_settings())
    query_vec = embedder.embed(load_image(images["good"]))
    ex_dir = tmp_path / "examples"
    ex_dir.mkdir()
    with open_store(cfg) as store:
        _populate(store, embedder, ex_dir, query_vec, 300, 5)
    script = [{"content": verdict_json("normal", "patch_knn scored low."), "logprobs": label_logprobs(0.1)}]
    backend = build_backend(cfg.model_copy(update={"max_model_calls": 1}), script=script)
    agent = AnomalyAgent(cfg.model_copy(update={"max_model_calls": 1}), backend=backend)
    v = agent.detect(images["good"], category="texture", references="memory")
    assert v.status == "ok", v.error
    first = backend.model.calls[0]
    text = " ".join(b.get("text", "") for m in first if isinstance(m, HumanMessage) and isinstance(m.content, list)
                    for b in m.content if isinstance(b, dict))
    assert "ANOMALOUS example of 'texture': \"blob\"" in text
    shown = [b for m in first if isinstance(m.content, list) for b in m.content
             if isinstance(b, dict) and b.get("type") == "image_url"]
    assert len(shown) <= cfg.max_images_per_request


def test_refs_memory_works_when_the_nearest_examples_are_anomalies(tmp_path):
    images = write_set(tmp_path)
    cfg = load_config(backend="none", memory_path=tmp_path / "memory", threads=2)
    embedder = default_embedder(cfg.tool_settings())
    ex_dir = tmp_path / "examples"
    ex_dir.mkdir()
    with open_store(cfg) as store:
        _populate(store, embedder, ex_dir, embedder.embed(load_image(images["good"])), 3, 12, anomalies_nearer=True)
    v = AnomalyAgent(cfg).detect(images["good"], category="texture", references="memory")
    assert v.status == "ok", v.error
    assert "3 normal reference" in v.evidence[0].summary
