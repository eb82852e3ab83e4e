"""The batch runner with a real brightness detector: records, resume, failures, concurrency, metrics."""

from __future__ import annotations

import asyncio
import json

import pytest
from sklearn.metrics import roc_auc_score

from agent.errors import ModelServerError, UserInputError
from evals.datasets import load_dataset
from evals.results import ResultsLog, iter_records, repair_tail
from evals.runner import (
    Detector,
    EvalSpec,
    RunningAuroc,
    config_hash,
    evaluate,
    plan_items,
    run_items,
)
from tests.eval_helpers import BrightnessDetector, make_folder_tree, normal_image, write_png

CFG = {"backend": "fake", "threshold": 0.25, "api_key": "***"}


def _run(tmp_path, det, spec=None, **kw):
    root = tmp_path / "ds"
    if not root.exists():
        make_folder_tree(root)
    cats = load_dataset(root)
    kw.setdefault("progress", False)
    return evaluate(det, cats, spec or EvalSpec(shots=2), tmp_path / "run", CFG, {"root": str(root)}, **kw)


def test_records_hold_ground_truth_and_verdict(tmp_path):
    det = BrightnessDetector(map_dir=tmp_path / "tmpmaps")
    assert isinstance(det, Detector)
    paths, stats, metrics = _run(tmp_path, det, concurrency=3)
    recs = list(iter_records(paths.results))
    assert stats.done == len(recs) == 14 and stats.failed == 0
    r = recs[0]
    for key in ("image", "category", "gt_label", "gt_defect_type", "gt_mask", "repeat", "config_hash",
                "references", "pred_label", "pred_score", "explanation", "evidence", "status", "usage"):
        assert key in r, key
    assert len(r["references"]) == 2 and all("/train/good/" in p for p in r["references"])
    # maps are copied into the run directory
    assert all(rec["evidence"][0]["map_path"].startswith(str(paths.maps)) for rec in recs)
    # metrics agree with scikit-learn on the same records
    alpha = [x for x in recs if x["category"] == "alpha"]
    want = roc_auc_score([x["gt_label"] for x in alpha], [x["pred_score"] for x in alpha])
    assert metrics["per_category"]["alpha"]["auroc"] == pytest.approx(want)
    assert metrics["per_category"]["alpha"]["pixel_auroc"] is not None
    assert json.loads(paths.metrics.read_text())["mean"]["n"] == 14
    cfg = json.loads(paths.config.read_text())
    assert cfg["config_hash"] == metrics["config_hash"] and "python" in cfg["versions"]
    assert cfg["config"]["api_key"] == "***"


def test_failed_item_is_recorded_and_run_goes_on(tmp_path):
    root = make_folder_tree(tmp_path / "ds")
    write_png(root / "alpha" / "test" / "good" / "fail_x.png", normal_image(99))
    paths, stats, metrics = _run(tmp_path, BrightnessDetector())
    recs = list(iter_records(paths.results))
    failed = [r for r in recs if r["status"] == "error"]
    assert len(recs) == 15 and len(failed) == 1 and stats.failed == 1
    assert "RuntimeError: cannot judge" in failed[0]["error"] and failed[0]["gt_label"] == 0
    assert metrics["per_category"]["alpha"]["n_errors"] == 1 and metrics["per_category"]["alpha"]["n"] == 7


def test_resume_skips_done_and_retry_errors(tmp_path):
    root = make_folder_tree(tmp_path / "ds")
    write_png(root / "alpha" / "test" / "good" / "fail_x.png", normal_image(99))
    _run(tmp_path, BrightnessDetector())
    with pytest.raises(UserInputError, match="already holds results.*--resume"):
        _run(tmp_path, BrightnessDetector())
    det = BrightnessDetector()
    _, stats, _ = _run(tmp_path, det, resume=True)
    assert det.calls == 0 and stats.skipped == 15
    det = BrightnessDetector()
    paths, stats, _ = _run(tmp_path, det, resume=True, retry_errors=True)
    assert det.calls == 1  # only the failed item is judged again
    recs = list(iter_records(paths.results))
    assert len(recs) == 16  # append-only: the retry is a new line; metrics use the last per key


def test_other_config_refuses_to_resume(tmp_path):
    _run(tmp_path, BrightnessDetector())
    with pytest.raises(UserInputError, match="another configuration"):
        _run(tmp_path, BrightnessDetector(), spec=EvalSpec(shots=3), resume=True)


def test_truncated_tail_is_repaired(tmp_path):
    log = tmp_path / "results.jsonl"
    log.write_bytes(b'{"image": "a", "category": "c", "config_hash": "h"}\n{"image": "b", "categ')
    assert [r["image"] for r in iter_records(log)] == ["a"]
    assert repair_tail(log) == len(b'{"image": "b", "categ')
    with ResultsLog(log) as out:
        out.append({"image": "c", "category": "c", "config_hash": "h"})
    assert [r["image"] for r in iter_records(log)] == ["a", "c"]


def test_concurrency_is_bounded_and_used(tmp_path):
    make_folder_tree(tmp_path / "ds", n_good=6, n_bad=4)
    det = BrightnessDetector(delay_s=0.02)
    _run(tmp_path, det, concurrency=4)
    assert det.max_in_flight == 4


def test_consecutive_failures_abort(tmp_path):
    class Down:
        async def adetect(self, image, *, category=None, references=None):
            raise ConnectionError("server down")

    make_folder_tree(tmp_path / "ds")
    with pytest.raises(ModelServerError, match="5 items in a row failed.*server down"):
        _run(tmp_path, Down(), max_consecutive_errors=5, concurrency=1)
    recs = list(iter_records(tmp_path / "run" / "results.jsonl"))
    assert len(recs) == 5 and all(r["status"] == "error" for r in recs)


class MemoryReadingDetector(BrightnessDetector):
    """A detector that reads a memory store (a set of image paths) and notes every query it holds."""

    def __init__(self, store: set[str]):
        super().__init__()
        self.store = store
        self.leaked: list[str] = []
        self.queries: list[str] = []

    async def adetect(self, image, *, category=None, references=None):
        self.queries.append(image)
        if image in self.store:  # the query itself is retrievable as a labelled example
            self.leaked.append(image)
        return await super().adetect(image, category=category, references=references)


def test_repeats_and_anomaly_shots_use_one_memory_per_repeat(tmp_path):
    root = make_folder_tree(tmp_path / "ds", n_train=6, n_bad=3)
    cats = load_dataset(root)
    spec = EvalSpec(shots=2, shot_seed=7, repeats=3, anomaly_shots=2)
    items, held = plan_items(cats, spec)
    assert set(held) == {(r, c) for r in range(3) for c in ("alpha", "beta")}
    # the draws differ across repeats, so one store shared by all repeats would leak test items
    all_shots = {s.path for v in held.values() for s in v}
    assert any(it.sample.path in all_shots for it in items)
    stores: dict[int, set[str]] = {}
    detectors: dict[int, MemoryReadingDetector] = {}

    def memory_for_repeat(rep, samples):
        assert rep not in stores, "a repeat's memory must be built once"
        stores[rep] = {s.path for s in samples}
        detectors[rep] = MemoryReadingDetector(stores[rep])
        return detectors[rep]

    paths, stats, metrics = evaluate(None, cats, spec, tmp_path / "run", CFG, {}, progress=False,
                                     memory_for_repeat=memory_for_repeat)
    assert sorted(stores) == [0, 1, 2]
    for rep, det in detectors.items():
        assert stores[rep] == {s.path for (r, _), v in held.items() if r == rep for s in v}
        tested = {it.sample.path for it in items if it.repeat == rep}
        assert set(det.queries) == tested  # each repeat's items went to the detector of that repeat
        assert det.leaked == [] and not tested & stores[rep]
    assert metrics["repeats"] == 3 and len(metrics["per_repeat"]) == 3
    refs = {tuple(r["references"]) for r in iter_records(paths.results) if r["category"] == "alpha"}
    assert len(refs) == 3  # one draw per repeat
    with pytest.raises(UserInputError, match="needs a memory store"):
        evaluate(BrightnessDetector(), cats, spec, tmp_path / "run2", CFG, {}, progress=False)
    with pytest.raises(UserInputError, match="--shot-seed"):
        EvalSpec(repeats=3)


def test_config_hash_ignores_secrets_and_runtime():
    spec = EvalSpec(shots=1)
    a = config_hash({"model": "m", "api_key": "x", "threads": 2}, spec, "p")
    assert a == config_hash({"model": "m", "api_key": "y", "threads": 8}, spec, "p")
    assert a != config_hash({"model": "n"}, spec, "p")
    assert a != config_hash({"model": "m"}, spec, "q")
    assert a != config_hash({"model": "m"}, EvalSpec(shots=2), "p")


def test_running_auroc():
    ra = RunningAuroc()
    assert ra.value() is None
    for label, score in [(0, 0.1), (1, 0.9), (0, 0.6), (1, 0.4)]:
        ra.add("c", label, score)
    assert ra.value() == pytest.approx(roc_auc_score([0, 1, 0, 1], [0.1, 0.9, 0.6, 0.4]))


def test_run_items_rejects_bad_concurrency(tmp_path):
    with ResultsLog(tmp_path / "r.jsonl") as log, pytest.raises(UserInputError, match="concurrency"):
        asyncio.run(run_items(BrightnessDetector(), [], log, "h", concurrency=0))


def test_direct_baseline_one_call_per_image(tmp_path, isolated_home):
    from agent.config import load_config
    from evals.direct_baseline import DirectBaseline
    from evals.fakeserver import FakeOpenAIServer, Reply

    root = make_folder_tree(tmp_path / "ds", categories=("alpha",))
    cats = load_dataset(root)
    n = len(cats[0].test)
    script = [Reply(content="yes", label_probs={"yes": 0.8, "no": 0.2})] * n
    with FakeOpenAIServer(script=script) as srv:
        cfg = load_config(backend="openai", base_url=srv.base_url, model="fake-vlm")
        base = DirectBaseline(cfg)
        paths, stats, _ = evaluate(base, cats, EvalSpec(shots=2, baseline="direct"), tmp_path / "run",
                                   cfg.masked(), {}, progress=False)
        assert srv.served == n
        req = srv.requests[0]
        assert len(req.images) == 3  # two references and the query, in one request
        assert req.system_count == 1 and req.body.get("logprobs") is True
    recs = list(iter_records(paths.results))
    assert stats.failed == 0 and all(r["pred_score"] == pytest.approx(0.8) for r in recs)
    assert all(r["score_source"] == "logprobs" and r["usage"]["model_calls"] == 1 for r in recs)
    assert all(r["prompt_hash"] for r in recs)
