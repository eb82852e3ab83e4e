"""Several replicas in ``base_url``: real HTTP to fake OpenAI servers on loopback.

Requests spread by fewest outstanding; a replica stopped mid-run costs no item (they finish on the
other); a refusing replica cools down; with every replica down the error names them all.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from PIL import Image

from agent.backends.endpoint import probe_endpoint
from agent.backends.factory import build_backend
from agent.backends.replicas import ReplicaSet
from agent.config import load_config
from evals.datasets import Sample
from evals.direct_baseline import DirectBaseline
from evals.fakeserver import FakeOpenAIServer, Reply, closed_port_url
from evals.results import ResultsLog, iter_records
from evals.runner import WorkItem, run_items

REPLY = Reply(content="no", label_probs={"no": 0.7, "yes": 0.3})


def _items(tmp_path, n: int) -> list[WorkItem]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n + 1):
        path = tmp_path / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return [WorkItem(Sample(p, "bench", 0, "good"), paths[:1], 0) for p in paths[1:]]


def _detector(urls: list[str]) -> DirectBaseline:
    cfg = load_config(backend="openai", base_url=",".join(urls), model="fake-vlm", max_retries=0)
    return DirectBaseline(cfg, build_backend(cfg))


def test_replica_choice_is_fewest_outstanding_and_refusals_cool_down():
    now = [0.0]
    replicas = ReplicaSet(["http://a/v1", "http://b/v1/", "http://c/v1"], cooldown_s=10.0, clock=lambda: now[0])
    a = replicas.acquire(set())
    b = replicas.acquire(set())
    c = replicas.acquire(set())
    assert [a.url, b.url, c.url] == ["http://a/v1", "http://b/v1", "http://c/v1"]
    replicas.release(b, ok=True)
    assert replicas.acquire(set()).url == "http://b/v1"  # the only one with nothing outstanding
    replicas.release(a, ok=False)  # a refused: out of rotation for 10 s although it is idle
    picks = [replicas.acquire(set()).url for _ in range(4)]
    assert picks == ["http://b/v1", "http://c/v1", "http://b/v1", "http://c/v1"]
    now[0] = 10.5  # cool-down over: the idle replica is chosen again
    assert replicas.acquire(set()).url == "http://a/v1"
    assert replicas.acquire({"http://a/v1", "http://b/v1", "http://c/v1"}) is None


def test_requests_spread_over_two_replicas(tmp_path):
    items = _items(tmp_path, 16)
    with FakeOpenAIServer(default=REPLY, latency_s=0.1, decode_images=False) as one, \
            FakeOpenAIServer(default=REPLY, latency_s=0.1, decode_images=False) as two:
        detector = _detector([one.base_url, two.base_url])
        with ResultsLog(tmp_path / "r.jsonl") as log:
            stats = asyncio.run(run_items(detector, items, log, "h", concurrency=4))
        assert stats.failed == 0
        assert one.served + two.served == 16
        assert 6 <= one.served <= 10, (one.served, two.served)  # 4 in flight, 2 per replica


def test_a_replica_stopped_mid_run_costs_no_item(tmp_path):
    items = _items(tmp_path, 24)
    with FakeOpenAIServer(default=REPLY, latency_s=0.05, decode_images=False) as survivor:
        doomed = FakeOpenAIServer(default=REPLY, latency_s=0.05, decode_images=False).start()
        detector = _detector([doomed.base_url, survivor.base_url])

        def stop_after_some() -> None:
            deadline = time.monotonic() + 30
            while doomed.served < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            doomed.stop()

        stopper = threading.Thread(target=stop_after_some, daemon=True)
        stopper.start()
        log_path = tmp_path / "r.jsonl"
        with ResultsLog(log_path) as log:
            stats = asyncio.run(run_items(detector, items, log, "h", concurrency=4))
        stopper.join(5)
        recs = list(iter_records(log_path))
        assert [r["status"] for r in recs] == ["ok"] * 24, [r.get("error") for r in recs if r["status"] != "ok"]
        assert stats.failed == 0 and len({r["image"] for r in recs}) == 24
        assert 3 <= doomed.served < 24
        assert survivor.served >= 24 - doomed.served


def test_every_replica_down_names_them(tmp_path):
    urls = [closed_port_url(), closed_port_url()]
    detector = _detector(urls)
    verdict = asyncio.run(detector.adetect(_items(tmp_path, 1)[0].sample.path, category="bench"))
    assert verdict.status == "error" and verdict.error_kind == "model"
    assert all(u in verdict.error for u in urls) and "connection refused" in verdict.error


def test_probe_names_the_replica_that_is_down():
    down = closed_port_url()
    with FakeOpenAIServer() as up:
        models, detail = probe_endpoint([down, up.base_url])
    assert models == ["fake-vlm"]
    assert detail.startswith("1 of 2 replicas answered") and down in detail and "connection refused" in detail
    models, detail = probe_endpoint([down, closed_port_url()])
    assert models is None and detail.startswith("none of 2 replicas answers")


@pytest.mark.parametrize("value", ["http://a/v1, http://b/v1/", ["http://a/v1", "http://b/v1"]])
def test_base_url_takes_a_list_or_commas(value):
    cfg = load_config(base_url=value)
    assert cfg.base_urls == ["http://a/v1", "http://b/v1"]
    assert load_config(base_url="http://a/v1/").base_url == "http://a/v1"
