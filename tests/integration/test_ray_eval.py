"""`eval --ray`: a real local Ray cluster (2 CPUs, no dashboard), one for the whole module.

Tools-only evaluations on the synthetic set: the same verdicts as the local runner item for item;
an actor killed mid-run loses and duplicates nothing; a second --resume starts nothing.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from agent.api import AnomalyAgent  # noqa: E402
from agent.cli import main  # noqa: E402
from agent.errors import UserInputError  # noqa: E402
from evals.datasets import load_dataset  # noqa: E402
from evals.ray_pool import RayPool  # noqa: E402
from evals.results import iter_records  # noqa: E402
from evals.runner import EvalSpec, evaluate  # noqa: E402
from evals.synthetic import generate_dataset  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, seed=1, categories=["fabric"], n_train=2, n_test=8, size=64)
    return root


def _records(path: Path) -> dict[str, dict]:
    return {r["image"]: r for r in iter_records(path)}


def _eval_cli(root: Path, out: Path, *extra: str) -> int:
    return main(["eval", str(root), "--shots", "2", "--backend", "none", "--out", str(out), "--no-report",
                 "--no-progress", "--bootstrap", "0", *extra])


def test_ray_workers_give_the_local_runners_verdicts(cluster, synth, tmp_path, isolated_home):
    assert _eval_cli(synth, tmp_path / "local") == 0
    # bare --ray: a local Ray (here the module's cluster, already running), 2 actors
    assert _eval_cli(synth, tmp_path / "ray", "--ray", "--workers", "2") == 0
    local, remote = _records(tmp_path / "local" / "results.jsonl"), _records(tmp_path / "ray" / "results.jsonl")
    assert len(local) == 8 and set(remote) == set(local)
    for image, rec in local.items():
        other = remote[image]
        assert other["status"] == rec["status"] == "ok"
        assert other["pred_label"] == rec["pred_label"], image
        # Ray gives a 1-CPU actor OMP_NUM_THREADS=1, so float sums may differ in the last digits
        assert other["pred_score"] == pytest.approx(rec["pred_score"], rel=1e-4, abs=1e-6), image
        assert [e["tool"] for e in other["evidence"]] == [e["tool"] for e in rec["evidence"]]
        assert other["references"] == rec["references"]
        for ev in other["evidence"]:  # the maps came back through Ray into the run directory
            if ev.get("map_path"):
                assert Path(ev["map_path"]).is_file() and str(tmp_path / "ray" / "maps") in ev["map_path"]
    mean_local, mean_ray = (json.loads((tmp_path / d / "metrics.json").read_text())["mean"] for d in ("local", "ray"))
    for key in ("auroc", "pixel_auroc", "aupro", "coverage"):  # pixel metrics read the maps sent back
        assert mean_ray[key] == pytest.approx(mean_local[key], abs=1e-4), key


def test_killed_actor_loses_nothing_and_resume_does_nothing(cluster, synth, tmp_path):
    cfg_agent = AnomalyAgent.from_config(backend="none", memory_path=tmp_path / "memory")
    categories = load_dataset(synth)
    out = tmp_path / "run"
    pool = RayPool(cfg_agent.config, workers=2, per_worker=2, backend=cfg_agent.backend)
    killed = threading.Event()

    def kill_when_started() -> None:  # once some items are done, kill the actor that has items in flight
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            busy = [i for i, n in enumerate(pool.in_flight) if n > 0]
            if (out / "results.jsonl").exists() and busy:
                ray.kill(pool.actors[busy[0]])
                killed.set()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_when_started, daemon=True)
    watcher.start()
    try:
        _, stats, _ = evaluate(pool, categories, EvalSpec(shots=2), out, {"backend": "none"}, {"root": str(synth)},
                               concurrency=4, progress=False, n_boot=0)
    finally:
        watcher.join(5)
        pool.close()
    assert killed.is_set()
    assert pool.retried >= 1 and pool.replaced == 1  # the dead actor's items moved; a new actor took its slot
    counts = collections.Counter(r["image"] for r in iter_records(out / "results.jsonl"))
    assert set(counts) == {s.path for c in categories for s in c.test}
    assert all(n == 1 for n in counts.values()), counts
    assert all(r["status"] == "ok" for r in iter_records(out / "results.jsonl"))
    assert stats.done == 8 and stats.failed == 0

    before = (out / "results.jsonl").read_bytes()
    again = RayPool(cfg_agent.config, workers=2, backend=cfg_agent.backend)
    _, stats, _ = evaluate(again, categories, EvalSpec(shots=2), out, {"backend": "none"}, {"root": str(synth)},
                           concurrency=4, progress=False, n_boot=0, resume=True)
    again.close()
    assert stats.done == 0 and stats.skipped == 8
    assert again.info == []  # no actor was started
    assert (out / "results.jsonl").read_bytes() == before


def test_a_lone_dead_actor_is_replaced_and_its_items_wait_for_the_new_one(cluster, synth, tmp_path):
    agent = AnomalyAgent.from_config(backend="none", memory_path=tmp_path / "memory")
    pool = RayPool(agent.config, workers=1, backend=agent.backend).start()
    ray.kill(pool.actors[0])
    out = tmp_path / "run"
    try:
        _, stats, _ = evaluate(pool, load_dataset(synth), EvalSpec(shots=2), out, {"backend": "none"},
                               {"root": str(synth)}, concurrency=2, progress=False, n_boot=0)
        assert pool.status().startswith("workers 1/1, 1 replaced, ")
    finally:
        pool.close()
    recs = list(iter_records(out / "results.jsonl"))
    assert len(recs) == 8 and len({r["image"] for r in recs}) == 8
    assert all(r["status"] == "ok" for r in recs) and stats.failed == 0
    assert pool.replaced == 1 and 1 <= pool.retried <= 2  # the items in flight on the dead actor


def test_items_fail_as_worker_errors_when_every_actor_is_dead(cluster, synth, tmp_path):
    agent = AnomalyAgent.from_config(backend="none", memory_path=tmp_path / "memory")
    pool = RayPool(agent.config, workers=1, max_attempts=2, backend=agent.backend, max_replacements=0).start()
    ray.kill(pool.actors[0])
    out = tmp_path / "run"
    try:
        _, stats, _ = evaluate(pool, load_dataset(synth), EvalSpec(shots=2), out, {"backend": "none"},
                               {"root": str(synth)}, concurrency=2, progress=False, n_boot=0)
    finally:
        pool.close()
    recs = list(iter_records(out / "results.jsonl"))
    assert len(recs) == 8 and len({r["image"] for r in recs}) == 8
    assert {r["error_kind"] for r in recs} == {"worker"}
    assert "rerun with --resume --retry-errors" in recs[0]["error"]
    assert stats.failed == 8


def test_workers_that_cannot_start_stop_the_run_with_one_error(cluster, synth, tmp_path):
    agent = AnomalyAgent.from_config(backend="none", memory_path=tmp_path / "memory")
    pool = RayPool(agent.config, workers=1, gpus_per_worker=1, startup_timeout_s=3, backend=agent.backend)
    out = tmp_path / "run"
    with pytest.raises(UserInputError, match=r"only 0 of 1 Ray workers started within 3 s \(the cluster has 2 CPUs, "
                                              r"0 GPUs\)\. Fix: lower --workers or --ray-gpus-per-worker"):
        evaluate(pool, load_dataset(synth), EvalSpec(shots=2), out, {"backend": "none"}, {"root": str(synth)},
                 progress=False, n_boot=0)
    pool.close()
    assert not (out / "results.jsonl").exists() or not (out / "results.jsonl").read_text()


def test_the_driver_refuses_workers_that_do_not_match_it(cluster, tmp_path, monkeypatch):
    import evals.ray_pool as ray_pool

    agent = AnomalyAgent.from_config(backend="none", memory_path=tmp_path / "memory")
    real = ray_pool.worker_identity
    # the driver expects another package version: the (real) workers report theirs, which differs
    monkeypatch.setattr(ray_pool, "worker_identity", lambda cfg: {**real(cfg), "version": "0.0.0-driver"})
    pool = RayPool(agent.config, workers=1, startup_timeout_s=60, backend=agent.backend)
    with pytest.raises(UserInputError) as err:
        pool.start()
    text = str(err.value)
    assert "a Ray worker does not match the driver (version: driver '0.0.0-driver', worker on" in text
    assert "Fix: install the same anomaly-agent on every node" in text and "\n" not in text
    assert pool.actors == []  # stopped


def test_workers_report_version_memory_and_endpoint(cluster, tmp_path):
    agent = AnomalyAgent.from_config(backend="none", memory_path=tmp_path / "memory")
    with RayPool(agent.config, workers=1, startup_timeout_s=60, backend=agent.backend) as pool:
        pool.start()
        (info,) = pool.info
    assert {"version", "code", "memory", "endpoint"} <= set(info)
    assert info["memory"] == {"none": True} and info["endpoint"]["backend"] == "none"
    assert info["code"] == pool.expected["code"]
