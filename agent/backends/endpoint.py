"""Is an OpenAI-compatible endpoint up? ``GET {base_url}/models`` (used by `doctor` and `auto`)."""

from __future__ import annotations

import httpx
from pydantic import SecretStr


def _cause(exc: Exception) -> str:
    """A short cause for a transport error ("connection refused", "timed out after 2s", ...)."""
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "unknown host"
    return text.splitlines()[0][:160]


def served_models(base_url: str, api_key: str | SecretStr | None = None, timeout: float = 5.0) -> list[str]:
    """Model ids the endpoint serves. Raises httpx errors and `ValueError` on a non-OpenAI answer."""
    key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=timeout)
    response.raise_for_status()
    data = response.json()
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        msg = "the answer has no 'data' list"
        raise ValueError(msg)
    return [str(m.get("id")) for m in data["data"] if isinstance(m, dict)]


def check_endpoint(
    base_url: str | list[str] | None, api_key: str | SecretStr | None = None, timeout: float = 5.0
) -> tuple[bool, str]:
    """`probe_endpoint` as (ok, detail) (see there)."""
    models, detail = probe_endpoint(base_url, api_key, timeout)
    return models is not None, detail


def probe_endpoint(
    base_url: str | list[str] | None, api_key: str | SecretStr | None = None, timeout: float = 5.0
) -> tuple[list[str] | None, str]:
    """Ask ``GET {base_url}/models`` whether an OpenAI-compatible server answers.

    Args:
        base_url: e.g. ``http://localhost:8000/v1``; None means "not configured"; a list: replicas of
            one model, each asked (the models of the first that answers; the detail names the down ones).
        api_key: sent as a Bearer token when given.
        timeout: seconds for the whole request.

    Returns:
        (served model ids, or None when it does not answer; detail): detail is one line, e.g. ``"http://x/v1 answered; serves: Qwen/Qwen3-VL-8B-Instruct"``
        or ``"http://x/v1 unreachable (connection refused). Fix: ..."``.
    """
    if not base_url:
        return None, "no endpoint configured (set --base-url or ANOMALY_AGENT_BASE_URL)"
    if not isinstance(base_url, str):
        return _probe_replicas(list(base_url), api_key, timeout)
    fix = "Fix: start the server (`anomaly-agent serve-model MODEL`) or set --base-url / ANOMALY_AGENT_BASE_URL"
    try:
        models = served_models(base_url, api_key, timeout)
    except httpx.HTTPStatusError as exc:
        code = exc.response.status_code
        hint = "check --api-key / ANOMALY_AGENT_API_KEY" if code in (401, 403) else "check that base_url ends in /v1"
        return None, f"{base_url} answered HTTP {code} to GET /models. Fix: {hint}"
    except httpx.HTTPError as exc:
        return None, f"{base_url} unreachable ({_cause(exc)}). {fix}"
    except ValueError as exc:
        return None, f"{base_url}/models is not an OpenAI-compatible answer ({exc}). Fix: check base_url"
    shown = ", ".join(models[:5]) + (f" (+{len(models) - 5} more)" if len(models) > 5 else "")
    return models, f"{base_url} answered; serves: {shown or 'no models'}"


def _probe_replicas(urls: list[str], api_key, timeout: float) -> tuple[list[str] | None, str]:
    """`probe_endpoint` over several replicas: the first answering one's models; the detail names the down ones."""
    if len(urls) == 1:
        return probe_endpoint(urls[0], api_key, timeout)
    answers = [(url, *probe_endpoint(url, api_key, timeout)) for url in urls]
    up = [(url, models) for url, models, _ in answers if models is not None]
    down = [f"{url}: {detail.split(f'{url} ', 1)[-1].split('. Fix:')[0]}" for url, models, detail in answers
            if models is None]
    if not up:
        return None, (f"none of {len(urls)} replicas answers ({'; '.join(down)}). Fix: start the servers or "
                      "correct --base-url / ANOMALY_AGENT_BASE_URL")
    models = up[0][1]
    note = f"; down: {'; '.join(down)}" if down else ""
    return models, f"{len(up)} of {len(urls)} replicas answered{note}; serves: {', '.join(models[:5]) or 'no models'}"
