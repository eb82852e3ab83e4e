"""What a Ray cluster's workers must share with the driver (issue 22).

- `check_cluster_reach`: when the cluster has nodes other than this machine, settings that name this
  machine (a localhost model endpoint or memory server, a local memory folder) are refused with the fix.
- `worker_config`: the config an actor runs with: the driver's, except for the driver's default cache folder.
- `worker_identity` / `identity_mismatch`: each actor reports its package version, a digest of its
  sources, its memory and its model endpoint; the driver refuses actors that differ from it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from agent.errors import UserInputError

LOCAL_HOSTS = ("localhost", "127.", "0.0.0.0", "::1", "[::1]")


def _is_local_host(host: str | None) -> bool:
    host = (host or "").lower()
    return host == "localhost" or host.endswith(".localhost") or any(host.startswith(p) for p in LOCAL_HOSTS[1:])


def other_nodes(address: str | None) -> int:
    """How many alive nodes of the joined cluster are not this machine (Ray Client: all of them)."""
    import socket

    import ray

    alive = [n for n in ray.nodes() if n.get("Alive", n.get("alive", False))]
    if address and address.startswith("ray://"):
        return len(alive)  # the driver runs outside the cluster
    try:
        here = {ray.util.get_node_ip_address(), socket.gethostbyname(socket.gethostname()), "127.0.0.1"}
    except OSError:
        here = {"127.0.0.1"}
    return sum(1 for n in alive if n.get("NodeManagerAddress") not in here)


def cluster_reach_problems(config, n_other: int) -> list[str]:
    """What a worker on another node could not reach: a localhost model endpoint, a local memory
    store, a memory server on localhost. Empty when nothing is wrong (or there are no other nodes)."""
    from urllib.parse import urlparse

    if n_other == 0:
        return []
    problems = []
    for url in config.base_urls:
        if _is_local_host(urlparse(url).hostname):
            problems.append(f"the model endpoint {url} is this machine's localhost. Fix: serve the model on a "
                            "routable address and pass --base-url http://HOST:8000/v1 (a name or IP every node reaches)")
    if config.memory_host and _is_local_host(config.memory_host):
        problems.append(f"memory_host {config.memory_host} is this machine's localhost. Fix: set memory_host "
                        "(ANOMALY_AGENT_MEMORY_HOST) to a name or IP every node reaches")
    elif not config.memory_host and Path(config.memory_path).exists():
        problems.append(f"the memory {config.memory_path} is a folder on this machine. Fix: serve it with a Chroma "
                        "server and pass --memory server with memory_host (ANOMALY_AGENT_MEMORY_HOST) set, or run "
                        "without --memory")
    return problems


def check_cluster_reach(config, address: str | None) -> None:
    """Refuse, in one line, settings that workers on other nodes cannot use (`cluster_reach_problems`).

    Raises:
        UserInputError: the cluster has other nodes and the config names this machine's resources.
    """
    n_other = other_nodes(address)
    problems = cluster_reach_problems(config, n_other)
    if problems:
        msg = f"--ray {address}: the cluster has {n_other} other node(s), and " + "; ".join(problems)
        raise UserInputError(msg)


def code_digest() -> str:
    """sha256 (16 hex) of this checkout's Python sources (agent, tools, memory, evals, prompts)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for pkg in ("agent", "tools", "memory", "evals", "prompts"):
        for path in sorted((root / pkg).rglob("*")):
            if path.suffix in (".py", ".yaml") and path.is_file():
                h.update(str(path.relative_to(root)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


def worker_config(config):
    """The driver's `AgentConfig` as a worker uses it: a `bank_dir` left at its default becomes this worker's
    own default (``$ANOMALY_AGENT_HOME/banks`` on its node), not the driver's home folder, which another
    node may not have or may not let it write. A bank_dir the user set (flag, env, YAML) is kept: a shared
    folder is the point of setting it."""
    if "bank_dir" in config.model_fields_set:
        return config
    from agent.config import default_home

    copy = config.model_copy(update={"bank_dir": default_home() / "banks"})
    copy.__pydantic_fields_set__.discard("bank_dir")
    return copy


def worker_identity(config) -> dict[str, Any]:
    """What must be the same on the driver and on every worker: the package (version and a digest of
    its sources), the memory (where, and a fingerprint of what it holds) and the model endpoint."""
    from importlib import metadata

    try:
        version = metadata.version("anomaly-agent")
    except metadata.PackageNotFoundError:
        version = "not installed"
    if config.memory_host:
        memory: dict[str, Any] = {"host": config.memory_host, "port": config.memory_port}
    elif Path(config.memory_path).exists():
        memory = {"path": str(config.memory_path)}
    else:
        memory = {"none": True}
    if len(memory) > 1 or "path" in memory:
        from evals.memory_scope import fingerprint

        try:
            memory.update(fingerprint(config))
        except UserInputError as exc:
            memory["error"] = str(exc)
    return {"version": version, "code": code_digest(), "memory": memory,
            "endpoint": {"backend": config.backend, "base_url": config.base_urls, "model": config.model}}


def identity_mismatch(expected: dict[str, Any], got: dict[str, Any]) -> str | None:
    """'field: driver X, worker Y; ...' for each identity field that differs, or None."""
    diffs = [f"{k}: driver {expected.get(k)!r}, worker on {got.get('host')} {got.get(k)!r}"
             for k in ("version", "code", "memory", "endpoint") if expected.get(k) != got.get(k)]
    return "; ".join(diffs) or None
