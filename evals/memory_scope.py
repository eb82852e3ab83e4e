"""Which memory an `eval` reads, and its identity for the config hash (issue 22).

An evaluation must not see its own answers: feedback and ``memory import --with-anomalies`` put test
images into the user's memory. So every ``eval`` reads its own run-scoped memory (empty, unless
``--anomaly-shots`` fills it with held-out anomalies) unless ``--memory PATH`` (a local store) or
``--memory server`` (the configured ``memory_host``) names one; even then the agent never retrieves an
example of the query's own image, re-encoded or rescaled copies included (`memory_leave_out`
"near-copies", `agent.nodes.memory.not_the_query`).

The memory's identity (where it is, how many examples, a fingerprint of their ids) is recorded in the
run's config and hashed with it, so ``--resume`` refuses to mix verdicts made with different memory
contents.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from agent.errors import UserInputError

RUN_SCOPED = {"scope": "run", "contents": "empty, or this run's --anomaly-shots only"}
SERVER = "server"


def fingerprint(cfg) -> dict[str, Any]:
    """{"examples", "notes", "fingerprint"} of the store `cfg` names: counts and a sha256 (16 hex) over
    every example's (id, category, label, embedding model) and every note's id.

    Raises:
        UserInputError: no store there (the fix names how to make one).
    """
    from memory.store import MemoryStoreError, open_store

    where = f"{cfg.memory_host}:{cfg.memory_port}" if cfg.memory_host else str(cfg.memory_path)
    if not cfg.memory_host and not Path(cfg.memory_path).exists():
        msg = f"--memory {cfg.memory_path}: no memory store there. Fix: check the path, or build one (`anomaly-agent memory import ROOT --memory PATH`)"
        raise UserInputError(msg)
    try:
        with open_store(cfg, create=False) as store:
            examples = store.list()
            notes = store.list_notes()
    except MemoryStoreError as exc:
        msg = f"--memory: cannot read the memory at {where} ({exc}). Fix: check the path or the server"
        raise UserInputError(msg) from exc
    lines = sorted(f"{e.id}|{e.category}|{e.label}|{e.embedding_model}" for e in examples)
    lines += sorted(f"note|{n.id}" for n in notes)
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    return {"examples": len(examples), "notes": len(notes), "fingerprint": digest}


def eval_memory(cfg, memory: str | None, anomaly_shots: int) -> tuple[Any, dict[str, Any]]:
    """(the config whose memory the eval reads, the memory's identity).

    Args:
        cfg: the effective `AgentConfig`.
        memory: ``--memory``: None (a run-scoped memory; the caller sets its path once the run
            directory is known), a local store's path, or "server" (the configured ``memory_host``).
        anomaly_shots: ``--anomaly-shots``; they go into run-scoped stores only.

    Raises:
        UserInputError: ``--anomaly-shots`` with ``--memory`` (it would write held-out anomalies into
            that memory, a shared server included), "server" without ``memory_host``, or no store there.
    """
    if memory is None:
        # never the user's store or a shared server: `memory_path` is set to the run's own folder later
        return cfg.model_copy(update={"memory_host": None}), dict(RUN_SCOPED)
    if anomaly_shots:
        where = (f"the shared memory server {cfg.memory_host}:{cfg.memory_port}" if memory == SERVER and cfg.memory_host
                 else f"the memory at {memory}")
        msg = (f"--anomaly-shots would write held-out test anomalies into {where}. Fix: drop --memory (the "
               "anomaly shots then go into the run's own memory, deleted with the run directory)")
        raise UserInputError(msg)
    if memory == SERVER:
        if not cfg.memory_host:
            msg = "--memory server needs memory_host. Fix: set ANOMALY_AGENT_MEMORY_HOST (and _MEMORY_PORT), or give --memory PATH"
            raise UserInputError(msg)
        identity = {"scope": "server", "host": cfg.memory_host, "port": cfg.memory_port}
        return cfg.model_copy(update={"memory_leave_out": "near-copies"}), {**identity, **fingerprint(cfg)}
    path = Path(memory).expanduser().absolute()
    cfg = cfg.model_copy(update={"memory_path": path, "memory_host": None, "memory_leave_out": "near-copies"})
    return cfg, {"scope": "path", "path": str(path), **fingerprint(cfg)}


def describe(identity: dict[str, Any]) -> str:
    """One line for the eval's header."""
    if identity.get("scope") == "run":
        return "memory: the run's own (empty unless --anomaly-shots); --memory PATH reads a store"
    where = identity.get("path") or f"{identity.get('host')}:{identity.get('port')}"
    return (f"memory: {where} ({identity['examples']} examples, fingerprint {identity['fingerprint']}; "
            "an example with the query's own pixels is never retrieved)")
