"""Backend error kinds. Each is a `ModelServerError` (CLI exit 3) whose message names the URL,
the cause and the fix, so a user can act on one line."""

from __future__ import annotations

from agent.errors import ModelServerError


class ModelUnreachableError(ModelServerError):
    """No connection to the endpoint (refused, DNS, reset)."""


class ModelTimeoutError(ModelServerError):
    """The server did not answer within ``request_timeout_s``."""


class ModelRateLimitedError(ModelServerError):
    """HTTP 429 persisted through every retry."""


class ModelServerFailureError(ModelServerError):
    """HTTP 5xx persisted through every retry."""


class ModelRequestRejectedError(ModelServerError):
    """HTTP 4xx other than 429: the server refused the request (unknown model, bad parameter).

    Attributes:
        status_code: the HTTP status.
        body: the server's error text (may be empty).
    """

    def __init__(self, message: str, status_code: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class ModelResponseError(ModelServerError):
    """The server answered with something that is not a valid chat completion (bad JSON, wrong shape)."""


class ModelOutputError(ModelServerError):
    """The model's answer failed schema validation even after the repair turn."""


class ScriptExhaustedError(ModelServerError):
    """A scripted model was called more times than its script has steps."""
