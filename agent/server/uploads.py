"""Request bodies: the size limit (413) and image intake for uploads (the CLI's `tools.images` checks).

`BodyLimit` is ASGI middleware: a POST/PUT/PATCH body larger than the limit is answered 413 before any
route sees it (by its Content-Length, or while it streams in). `check_image` validates uploaded bytes
with the same intake as `anomaly-agent detect` (format, pixel limits, modes), so the messages are the same;
not an image -> 415, too many pixels -> 413, anything else wrong with the image -> 400.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re

from agent.config import AgentConfig
from agent.server.errors import ApiError

EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


def _too_large(limit: int, size: int | None = None) -> ApiError:
    got = f"{size} bytes" if size is not None else "more"
    return ApiError(413, "payload_too_large", f"request body too large ({got} > {limit} bytes)",
                    "send smaller or fewer images, or start the server with a larger --max-upload-mb")


class BodyLimit:
    """ASGI middleware: bodies of POST/PUT/PATCH requests are read whole (up to `limit` bytes) and replayed;
    larger ones get a JSON 413 at once."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _too_large(self.limit, int(length)).send_asgi(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await _too_large(self.limit).send_asgi(send)
            if not message.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def safe_name(name: str | None, default: str = "image") -> str:
    """A file name fit for display and JSON (no folders, no odd characters); never used as a path to open."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]+", "_", base).strip(" .")[:100]
    return base or default


def check_image(data: bytes, name: str, config: AgentConfig) -> str:
    """Validate uploaded image bytes as the CLI's intake does; returns the file's extension (".png").

    Raises:
        ApiError: 415 (not an image / unsupported mode), 413 (too many pixels), 400 (empty, corrupt, too small).
    """
    from tools.images import (
        ImageInputError,
        ImageTooLargeError,
        NotAnImageError,
        UnsupportedModeError,
        load_image_with_mode,
    )

    if not data:
        raise ApiError(400, "invalid_image", f"{name}: empty upload", "send the image file's bytes")
    try:
        load_image_with_mode(data, config.max_image_pixels, config.min_image_side)
    except ImageInputError as exc:
        cause = f"{exc.cause} ({exc.detail})" if exc.detail else exc.cause
        status = 415 if isinstance(exc, NotAnImageError | UnsupportedModeError) else \
            413 if isinstance(exc, ImageTooLargeError) else 400
        kind = {415: "unsupported_media_type", 413: "image_too_large"}.get(status, "invalid_image")
        raise ApiError(status, kind, f"{name}: {cause}", exc.fix) from None

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return EXTENSIONS.get((img.format or "").upper(), ".png")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_data_url(url: str, name: str = "image") -> bytes:
    """The bytes of a ``data:image/...;base64,...`` URL.

    Raises:
        ApiError: 400 for anything else (the server never fetches a URL or opens a path it is given).
    """
    match = re.match(r"^data:([\w/+.-]*)(;[\w=.-]+)*;base64,", url or "")
    if not match:
        shown = (url or "")[:40]
        raise ApiError(400, "invalid_image", f"{name}: only data: URLs with base64 image bytes are accepted, got "
                       f"{shown!r}", "send the image inline as data:image/png;base64,... (the server fetches no URLs)")
    try:
        return base64.b64decode(url[match.end():], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_image", f"{name}: the data URL's base64 payload is invalid",
                       "encode the image bytes with standard base64") from None
