"""Issue 22, item 6: on a cluster with other nodes, settings that name this machine are refused with
the fix (mocked cluster info: `ray.nodes()`), and joining a cluster that does not answer times out."""

from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")

from agent.config import load_config  # noqa: E402
from agent.errors import UserInputError  # noqa: E402
from evals import ray_pool  # noqa: E402
from evals.ray_pool import RayPool, check_cluster_reach, connect, identity_mismatch  # noqa: E402


def _nodes(*ips: str) -> list[dict]:
    return [{"NodeManagerAddress": ip, "Alive": True} for ip in ips] + [{"NodeManagerAddress": "10.9.9.9", "Alive": False}]


@pytest.fixture
def two_nodes(monkeypatch):
    """This machine (127.0.0.1) and one other node, as `ray.nodes()` reports them."""
    monkeypatch.setattr(ray, "nodes", lambda: _nodes("127.0.0.1", "10.0.0.7"))
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.1")


def test_a_localhost_endpoint_is_refused_on_a_multi_node_cluster(two_nodes, tmp_path, monkeypatch):
    cfg = load_config(backend="openai", base_url="http://localhost:8000/v1", memory_path=tmp_path / "none")
    monkeypatch.setattr(ray_pool, "connect", lambda address, num_cpus: False)  # "joined" the mocked cluster
    monkeypatch.setattr(ray, "remote", lambda *a, **k: pytest.fail("no actor may start"))
    pool = RayPool(cfg, workers=2, address="auto")
    with pytest.raises(UserInputError) as err:
        pool.start()
    text = str(err.value)
    assert text.startswith("--ray auto: the cluster has 1 other node(s), and the model endpoint "
                           "http://localhost:8000/v1 is this machine's localhost")
    assert "Fix: serve the model on a routable address and pass --base-url http://HOST:8000/v1" in text
    assert "\n" not in text


def test_a_local_memory_folder_and_a_localhost_memory_server_are_refused(two_nodes, tmp_path):
    (tmp_path / "mem").mkdir()
    cfg = load_config(base_url="http://10.0.0.5:8000/v1", memory_path=tmp_path / "mem")
    with pytest.raises(UserInputError, match=r"is a folder on this machine\. Fix: serve it with a Chroma server and "
                                             r"pass --memory server with memory_host"):
        check_cluster_reach(cfg, "auto")
    cfg = load_config(base_url="http://10.0.0.5:8000/v1", memory_host="127.0.0.1")
    with pytest.raises(UserInputError, match=r"memory_host 127\.0\.0\.1 is this machine's localhost"):
        check_cluster_reach(cfg, "auto")


def test_routable_settings_pass_and_one_node_accepts_localhost(two_nodes, tmp_path, monkeypatch):
    check_cluster_reach(load_config(base_url="http://gpu-box:8000/v1", memory_host="chroma.lan",
                                    memory_path=tmp_path / "none"), "auto")
    monkeypatch.setattr(ray, "nodes", lambda: _nodes("127.0.0.1"))  # this machine alone
    check_cluster_reach(load_config(base_url="http://localhost:8000/v1", memory_path=tmp_path), "auto")


def test_ray_client_counts_every_node_as_another(tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "nodes", lambda: _nodes("127.0.0.1"))
    with pytest.raises(UserInputError, match="the cluster has 1 other node"):
        check_cluster_reach(load_config(base_url="http://127.0.0.1:8000/v1", memory_path=tmp_path / "x"),
                            "ray://head:10001")


def test_identity_mismatch_names_each_field():
    base = {"version": "1.0", "code": "abc", "memory": {"none": True}, "endpoint": {"model": "m"}}
    assert identity_mismatch(base, {**base, "host": "n1"}) is None
    text = identity_mismatch(base, {**base, "host": "n1", "code": "def", "memory": {"path": "/x"}})
    assert text == "code: driver 'abc', worker on n1 'def'; memory: driver {'none': True}, worker on n1 {'path': '/x'}"


def test_connecting_to_a_cluster_that_does_not_answer_times_out_in_one_line(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: time.sleep(3))
    start = time.perf_counter()
    with pytest.raises(UserInputError) as err:
        connect("ray://head.invalid:10001", 2, timeout_s=0.3)
    assert time.perf_counter() - start < 2.0
    text = str(err.value)
    assert text.startswith("cannot connect to the Ray cluster at ray://head.invalid:10001: no answer within 0.3 s.")
    assert "Fix: start it" in text and "\n" not in text


def test_a_refused_pool_starts_no_local_ray(two_nodes, tmp_path, monkeypatch):
    monkeypatch.setattr(ray_pool, "connect", lambda address, num_cpus: False)
    pool = RayPool(load_config(base_url="http://127.0.0.1:8000/v1", memory_path=tmp_path / "x"), address="auto")
    with pytest.raises(UserInputError):
        pool.start()
    assert not ray.is_initialized()


def test_a_worker_keeps_its_own_default_bank_dir_and_a_bank_dir_the_user_set(tmp_path, monkeypatch):
    """Actors on another node get their own default cache folder, not the driver's home; a set one is kept."""
    from evals.ray_cluster import worker_config

    monkeypatch.setenv("ANOMALY_AGENT_HOME", str(tmp_path / "driver-home"))
    default = load_config(memory_path=tmp_path / "none")
    chosen = load_config(memory_path=tmp_path / "none", bank_dir=tmp_path / "shared-banks")
    monkeypatch.setenv("ANOMALY_AGENT_HOME", str(tmp_path / "worker-home"))  # as on the worker's node
    assert worker_config(default).bank_dir == tmp_path / "worker-home" / "banks"
    assert worker_config(default).memory_path == default.memory_path  # everything else is the driver's
    assert worker_config(chosen).bank_dir == tmp_path / "shared-banks"
