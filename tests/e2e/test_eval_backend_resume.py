"""The backend actually used is part of an eval run (issue 12): config hash, every result line,
metrics.json; a resume after the endpoint disappeared refuses to mix backends."""

from __future__ import annotations

import json

from agent.cli import main
from evals.fakeserver import FakeOpenAIServer
from evals.results import iter_records
from tests.agent_fixtures import verdict_json
from tests.eval_helpers import make_folder_tree


def test_resume_after_the_endpoint_disappears_refuses_to_mix_backends(tmp_path, isolated_home, monkeypatch, capsys):
    root = make_folder_tree(tmp_path / "ds", categories=("alpha",), n_train=2, n_good=1, defects=("scratch",), n_bad=1)
    out = tmp_path / "run"
    monkeypatch.setenv("ANOMALY_AGENT_MAX_MODEL_CALLS", "1")
    monkeypatch.setenv("ANOMALY_AGENT_MAX_RETRIES", "0")
    reply = {"content": verdict_json("normal", "fine"), "label_probs": {"normal": 0.7, "anomalous": 0.3}}
    with FakeOpenAIServer(default=reply, models=["served-vlm"]) as srv:
        argv = ["eval", str(root), "--shots", "1", "--backend", "auto", "--base-url", srv.base_url,
                "--model", "served-vlm", "--out", str(out), "--no-progress", "--no-report", "--limit", "1"]
        assert main(argv) == 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert err.count("auto chose openai") == 1  # says which backend it chose, once
    records = list(iter_records(out / "results.jsonl"))
    assert records and all(r["backend"] == "openai" and r["model_id"] == "served-vlm" for r in records)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["backend"], metrics["served_model"]) == ("openai", "served-vlm")
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["backend"], config["backend_requested"], config["served_model"]) == ("openai", "auto", "served-vlm")

    # the endpoint is gone: auto would now run tools only
    code = main([*argv[:-2], "--limit", "2", "--resume"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "was run with backend openai (model served-vlm), but this run would use backend none" in err
    assert "mix their verdicts" in err and "Fix:" in err
    assert len(list(iter_records(out / "results.jsonl"))) == len(records)  # nothing was added
