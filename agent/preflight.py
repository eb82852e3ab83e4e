"""Check the model backend once before a batch, so a dead server fails in a second, not after every image.

With the `openai` backend, ``GET {base_url}/models`` must answer and list the configured model;
otherwise `preflight` raises `ModelServerError` (exit 3) naming the endpoint, the cause and the fix,
before any image is judged (each would otherwise run every tool first and then fail on the model).
Other backends need no check (`auto` already probed the endpoint when it chose; `none`/`scripted` have
no server; `transformers` loads in-process).
"""

from __future__ import annotations

from agent.errors import ModelServerError

PROBE_TIMEOUT_S = 10.0


def preflight(backend, config) -> str | None:
    """Raise `ModelServerError` when the backend's server cannot serve; returns the probe's line (or None).

    Args:
        backend: the built `agent.backends.factory.Backend`.
        config: the `AgentConfig` it was built from (base_url, api_key, model, request_timeout_s).
    """
    if backend.name != "openai":
        return None
    from agent.backends.endpoint import probe_endpoint

    timeout = min(PROBE_TIMEOUT_S, float(config.request_timeout_s))
    models, detail = probe_endpoint(config.base_url, config.api_key, timeout=timeout)
    if models is None:
        raise ModelServerError(f"model backend check failed before any image was judged: {detail}")
    if models and config.model not in models:
        shown = ", ".join(models[:5])
        msg = (f"model backend check failed before any image was judged: {config.base_url} does not serve "
               f"{config.model!r} (it serves: {shown}). Fix: pass --model with one of those, or serve {config.model}")
        raise ModelServerError(msg)
    return detail
