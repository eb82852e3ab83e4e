"""anomaly-agent: the LangGraph agent, its config, schemas, backends and CLI.

`from agent import AnomalyAgent` is the Python API (imported lazily so `import agent.config` stays light).
"""

from __future__ import annotations

__all__ = ["AnomalyAgent"]


def __getattr__(name: str):
    if name == "AnomalyAgent":
        from agent.api import AnomalyAgent

        return AnomalyAgent
    raise AttributeError(name)
