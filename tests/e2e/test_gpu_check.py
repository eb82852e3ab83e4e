"""`python -m evals.gpu_check` end to end against the fake vLLM-like server (`--base-url`: nothing started)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evals import gpu_check
from evals.fakeserver import FakeOpenAIServer, inspection_responder
from evals.quality_gate import check_quality

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_green_against_the_fake_server(tmp_path, isolated_home, capsys):
    with FakeOpenAIServer(models=["fake-vlm"], responder=inspection_responder) as srv:
        code = gpu_check.main(["fake-vlm", "--base-url", srv.base_url, "--out", str(tmp_path / "gc"),
                               "--categories", "fabric", "--n-train", "2", "--n-test", "4", "--size", "128",
                               "--shots", "1", "--limit", "4"])
        requests = list(srv.requests)
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    html = tmp_path / "gc" / "openai" / "report.html"
    assert html.exists()
    assert out.strip().splitlines()[-1] == f"gpu-check passed. compare report: {html}"
    assert "image set: NOT the named set synthetic-gc1" in out  # a smaller set than the named one
    assert "model - tools: " in out and "logprobs 4" in out  # the table, with the score sources
    backends = {name: json.loads((tmp_path / "gc" / name / "metrics.json").read_text())["backend"]
                for name in ("openai", "none", "direct")}
    assert backends == {"openai": "openai", "none": "none", "direct": "openai"}
    assert requests and all(r.rejected is None for r in requests)  # every request passed vLLM's checks
    assert any(r.body.get("tools") for r in requests) and any("Yes or No" in json.dumps(r.messages) for r in requests)


def test_gpu_check_says_when_the_server_does_not_serve_the_model(tmp_path, capsys):
    with FakeOpenAIServer(models=["other"]) as srv:
        code = gpu_check.main(["wanted-model", "--base-url", srv.base_url, "--out", str(tmp_path), "--start-timeout", "1"])
    assert code == 3
    assert "serves other, not 'wanted-model'" in capsys.readouterr().err


def test_make_gpu_check_runs_the_module():
    makefile = (REPO / "Makefile").read_text()
    assert "gpu-check: setup\n\t$(PY) -m evals.gpu_check $(GPU_MODEL) $(GPU_CHECK_ARGS)" in makefile


SMALL = ["--categories", "fabric", "--n-train", "2", "--n-test", "4", "--size", "128", "--shots", "1", "--limit", "4"]


def test_gpu_check_fails_when_the_verdicts_lack_logprobs(tmp_path, isolated_home, capsys):
    def no_logprobs(body):
        reply = inspection_responder(body)
        reply.omit_logprobs = True  # a server or model that sends none
        return reply

    with FakeOpenAIServer(models=["fake-vlm"], responder=no_logprobs) as srv:
        code = gpu_check.main(["fake-vlm", "--base-url", srv.base_url, "--out", str(tmp_path / "gc"), *SMALL])
    out, err = capsys.readouterr()
    assert code == gpu_check.QUALITY_FAILED, err[-3000:]
    assert "image AUROC" in out and "model - tools: " in out  # the table is printed on failure too
    assert "quality: 4 of 4 model verdicts lack log-probabilities (score_source: label 4)" in out
    assert out.strip().splitlines()[-1].startswith("gpu-check failed on quality (1 problem(s))")


def test_the_default_image_set_is_the_named_one_with_100_per_category():
    args, _ = gpu_check.parse_args([])
    assert gpu_check.set_name(args).startswith("synthetic-gc1 (100 test images per category of fabric,tray)")
    assert args.n_test >= 100 and args.limit is None


def _run(dir_: Path, scores: dict[str, float], labels: dict[str, int], source: str = "logprobs") -> Path:
    dir_.mkdir(parents=True)
    with (dir_ / "results.jsonl").open("w") as fh:
        for image, score in scores.items():
            fh.write(json.dumps({"image": image, "category": "fabric", "gt_label": labels[image], "repeat": 0, "config_hash": "h",
                                 "status": "ok", "pred_score": score, "score_source": source}) + "\n")
    return dir_


def test_the_gate_fails_when_the_model_is_clearly_worse_than_tools_only(tmp_path):
    rng = np.random.default_rng(0)
    labels = {f"img{i}": int(i < 50) for i in range(100)}
    tools = {k: 0.8 + 0.1 * rng.random() if y else 0.1 + 0.1 * rng.random() for k, y in labels.items()}  # separates
    noisy = {k: float(rng.random()) for k in labels}  # the model's configuration: chance level
    diff, problems = check_quality(_run(tmp_path / "m", noisy, labels), _run(tmp_path / "t", tools, labels), n_boot=200)
    assert diff["tools"] == pytest.approx(1.0) and diff["model"] < 0.7
    assert diff["delta_hi"] < 0
    (problem,) = problems
    assert "is below tools-only 1.000" in problem and "beyond the bootstrap 95% interval" in problem


def test_the_gate_passes_a_difference_within_chance(tmp_path):
    rng = np.random.default_rng(1)
    labels = {f"img{i}": int(i < 50) for i in range(100)}
    tools = {k: float(rng.normal(1.0 if y else 0.0)) for k, y in labels.items()}
    model = {k: v + float(rng.normal(0, 0.05)) for k, v in tools.items()}  # the same ranking, a little noise
    diff, problems = check_quality(_run(tmp_path / "m", model, labels), _run(tmp_path / "t", tools, labels), n_boot=200)
    assert problems == [], problems
    assert diff["delta_lo"] <= diff["delta"] <= diff["delta_hi"] and diff["delta_lo"] < 0 < diff["delta_hi"] + 1e-9


def test_the_gate_fails_on_partial_logprobs(tmp_path):
    labels = {"a": 1, "b": 0}
    scores = {"a": 0.9, "b": 0.1}
    _, problems = check_quality(_run(tmp_path / "m", scores, labels, "logprobs-partial"), _run(tmp_path / "t", scores, labels))
    assert problems == ["2 of 2 model verdicts lack log-probabilities (score_source: logprobs-partial 2). Fix: serve "
                        "the model with logprobs (vLLM does; `anomaly-agent serve-model` passes --max-logprobs 20), "
                        "and check that the verdict's label token is where the answer starts"]
