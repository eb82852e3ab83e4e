"""JSON errors that name the cause and the fix: ``{"error": {"type", "message", "fix", "status"}}``."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An HTTP error with a cause and a fix (and extra headers, e.g. Retry-After)."""

    def __init__(self, status: int, kind: str, message: str, fix: str, headers: dict | None = None,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.fix = status, kind, message, fix
        self.headers = headers or {}
        self.param, self.code = param, code

    def body(self) -> dict:
        error = {"type": self.kind, "message": self.message, "fix": self.fix, "status": self.status}
        if self.param is not None or self.code is not None:  # OpenAI's fields (the chat endpoint sets them)
            error.update(param=self.param, code=self.code)
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    async def send_asgi(self, send) -> None:
        """Answer from ASGI middleware and close the connection (a body the client still sends stays unread)."""
        payload = json.dumps(self.body()).encode()
        extra = [(k.lower().encode(), str(v).encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()), (b"connection", b"close"), *extra]})
        await send({"type": "http.response.body", "body": payload})


def split_fix(text: str) -> tuple[str, str]:
    """("cause", "fix") from the project's one-line messages "cause. Fix: fix"."""
    cause, sep, fix = text.partition(" Fix: ")
    return (cause.rstrip(". ") or text, fix.rstrip(".")) if sep else (text, "")


def internal_error(exc: BaseException) -> ApiError:
    """A 500 for an unexpected exception: its type only (no message, traceback or path; those go to the log)."""
    log.error("unexpected error while serving a request", exc_info=exc)
    return ApiError(500, "internal", f"an unexpected error ({type(exc).__name__}) stopped the request",
                    "retry; if it happens again, report it with the server log (it has the details)")


_HTTP_FIX = {
    404: "check the URL; see /docs for the API",
    405: "check the HTTP method; see /docs for the API",
    401: "send 'Authorization: Bearer <api key>'",
}


def install(app: FastAPI) -> None:
    """Register the handlers: ApiError, FastAPI's validation errors, plain HTTP errors and unexpected exceptions,
    all as JSON."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        redactor = getattr(getattr(request.app.state, "server", None), "redactor", None)
        if redactor is not None:  # no server folder in an error (texts from the agent may name one)
            exc.message, exc.fix = redactor.text(exc.message), redactor.text(exc.fix)
        if request.url.path.endswith("/chat/completions") and exc.code is None:
            exc.code = exc.kind  # OpenAI clients read `code` (and `param`)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}" for e in exc.errors())
        fix = "correct the named fields; see /docs for the schema"
        if request.url.path.endswith("/chat/completions"):  # OpenAI's status and error shape on that endpoint
            first = (exc.errors() or [{}])[0]
            param = ".".join(str(p) for p in first.get("loc", [])[1:]) or None
            return ApiError(400, "invalid_request_error", f"invalid request: {problems}", fix, param=param,
                            code="invalid_value").response()
        return ApiError(422, "invalid_request", f"invalid request: {problems}", fix).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, "http_error", str(exc.detail),
                        _HTTP_FIX.get(exc.status_code, "see /docs for the API"), dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return internal_error(exc).response()
