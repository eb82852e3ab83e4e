"""`eval --backend openai` with two replicas in --base-url and reference items (--shots 2): one event
loop for the whole run, so the reference pass reuses the client's connections without
"Event loop is closed", and both replicas serve requests."""

from __future__ import annotations

from agent.cli import main
from evals.fakeserver import FakeOpenAIServer, inspection_responder
from evals.results import iter_records
from evals.synthetic import generate_dataset


def test_eval_on_two_replicas_judges_test_and_reference_items(tmp_path, isolated_home):
    root = tmp_path / "ds"
    generate_dataset(root, seed=2, categories=["metal"], n_train=2, n_test=4, size=64)
    out = tmp_path / "run"
    with FakeOpenAIServer(responder=inspection_responder, latency_s=0.02) as one, \
            FakeOpenAIServer(responder=inspection_responder, latency_s=0.02) as two:
        code = main(["eval", str(root), "--shots", "2", "--backend", "openai", "--base-url",
                     f"{one.base_url},{two.base_url}", "--model", "fake-vlm", "--out", str(out), "--no-report",
                     "--no-progress", "--bootstrap", "0", "-j", "2"])
        served = (one.served, two.served)
    assert code == 0
    tests, refs = list(iter_records(out / "results.jsonl")), list(iter_records(out / "reference_scores.jsonl"))
    assert len(tests) == 4 and len(refs) == 2
    assert [r["status"] for r in tests + refs] == ["ok"] * 6, [r.get("error") for r in tests + refs]
    assert all(r["backend"] == "openai" and r["usage"]["model_calls"] >= 1 for r in tests + refs)
    assert min(served) >= 1, served
