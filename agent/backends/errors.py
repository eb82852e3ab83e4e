"""Backend error kinds. Each is a `ModelServerError` (CLI exit 3) whose message names the URL,
the cause and the fix, so a user can act on one line."""

from __future__ import annotations

import re

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


# (pattern on the server's error text, the fix); the first match names the fix of a 4xx rejection
_REJECTION_FIXES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"image\(s\) may be provided|at most \d+ image", re.I),
     "raise the server's image limit (`anomaly-agent serve-model --images N`, i.e. vLLM's "
     "--limit-mm-per-prompt) or lower max_images_per_request (ANOMALY_AGENT_MAX_IMAGES_PER_REQUEST) to match it"),
    (re.compile(r"logprobs.*max allowed|max_logprobs", re.I),
     "start the server with a higher --max-logprobs (`anomaly-agent serve-model --max-logprobs 20`)"),
    (re.compile(r"auto.? tool choice|enable-auto-tool-choice|tool-call-parser", re.I),
     "start the server with tool calling on (`anomaly-agent serve-model` passes --enable-auto-tool-choice "
     "--tool-call-parser PARSER)"),
    (re.compile(r"role 'user'|user messages? only|only.*user message", re.I),
     "images may only be sent in user messages; please report this as a bug in anomaly-agent"),
    (re.compile(r"load image|cannot identify image|decode.{0,20}image|image.{0,20}decode", re.I),
     "the server could not decode an image it was sent; check that the input is a valid PNG/JPEG file and "
     "that no proxy rewrites the request, or set image_format (ANOMALY_AGENT_IMAGE_FORMAT) to PNG"),
    (re.compile(r"maximum context length|max_model_len|too long", re.I),
     "raise the server's --max-model-len, or lower image_max_side / max_images_per_request"),
)
# a 400 that is about structured output: the only rejection that falls back to JSON mode / text
_STRUCTURED_OUTPUT = re.compile(
    r"response_format|json_schema|json schema|json_object|structured.?output|guided|grammar|xgrammar|outlines", re.I
)


def rejection_fix(text: str) -> str:
    """The fix for a request the server refused (HTTP 4xx), read from the server's message."""
    for pattern, fix in _REJECTION_FIXES:
        if pattern.search(text):
            return fix
    if _STRUCTURED_OUTPUT.search(text):
        return "use a server with structured output (vLLM), or a model whose chat template supports JSON mode"
    return "the server refused a request parameter; see its message above"


def is_structured_output_rejection(status_code: int | None, text: str) -> bool:
    """True for an HTTP 400 whose message is about ``response_format`` / structured output (and
    about nothing we know to be another cause, such as too many images)."""
    if status_code != 400 or not _STRUCTURED_OUTPUT.search(text or ""):
        return False
    return not any(pattern.search(text) for pattern, _ in _REJECTION_FIXES)
