"""Message preprocessing shared by the backends: one system message, bounded image sizes.

Content blocks follow the OpenAI chat shape that LangChain passes through:
``{"type": "text", "text": ...}`` and ``{"type": "image_url", "image_url": {"url": "data:..."}}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence

import numpy as np
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from PIL import Image, UnidentifiedImageError

from tools.images import StoredImage, image_content_block

_HEADER_CHARS = 65536  # base64 chars decoded to read an image's size (PNG/JPEG headers fit)
_BLOCK_CACHE_SIZE = 64
_block_cache: OrderedDict[tuple[str, int | None, str], dict] = OrderedDict()
_block_lock = threading.Lock()


def _as_blocks(content: str | list) -> list:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [{"type": "text", "text": b} if isinstance(b, str) else b for b in content]


def merge_system_messages(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """Merge every system message into one, placed first (some chat templates reject two).

    Text parts are joined with a blank line, in order. Non-system messages keep their order.
    Returns the input list unchanged (as a new list) when it has at most one system message
    and that one is already first.
    """
    systems = [m for m in messages if isinstance(m, SystemMessage)]
    rest = [m for m in messages if not isinstance(m, SystemMessage)]
    if not systems or (len(systems) == 1 and messages[0] is systems[0]):
        return list(messages)
    if all(isinstance(m.content, str) for m in systems):
        content: str | list = "\n\n".join(m.content for m in systems if m.content)
    else:
        blocks: list = []
        for m in systems:
            blocks.extend(_as_blocks(m.content))
        content = blocks
    return [SystemMessage(content=content), *rest]


def _data_url_parts(url: str) -> tuple[str, str] | None:
    """(mime, base64 payload) of a ``data:<mime>;base64,<payload>`` URL, else None."""
    if not url.startswith("data:") or ";base64," not in url[:100]:
        return None
    head, payload = url.split(",", 1)
    return head[5:].split(";", 1)[0], payload


def data_url_size(url: str) -> tuple[int, int] | None:
    """(width, height) of a base64 data-URL image, reading only its header; None if unreadable."""
    parts = _data_url_parts(url)
    if parts is None:
        return None
    payload = parts[1]
    for chunk in (payload[:_HEADER_CHARS], payload):
        try:
            raw = base64.b64decode(chunk[: len(chunk) // 4 * 4], validate=False)
            with Image.open(io.BytesIO(raw)) as img:
                return img.size
        except (UnidentifiedImageError, OSError, binascii.Error, ValueError):
            continue
    return None


def _shrink_block(block: dict, max_side: int) -> dict:
    url = block.get("image_url", {}).get("url", "") if isinstance(block.get("image_url"), dict) else ""
    size = data_url_size(url) if url else None
    if size is None or max(size) <= max_side:
        return block
    mime, payload = _data_url_parts(url)  # type: ignore[misc]
    with Image.open(io.BytesIO(base64.b64decode(payload))) as img:
        pixels = np.asarray(img.convert("RGB"))
    fmt = "JPEG" if mime == "image/jpeg" else "PNG"
    return {**block, **image_content_block(pixels, max_side, fmt)}


def limit_image_sizes(messages: Sequence[BaseMessage], max_side: int) -> list[BaseMessage]:
    """Downscale every ``data:`` image whose longer side exceeds `max_side` pixels.

    Images already small enough are passed through untouched (only their header is decoded), and
    a message without a large image is returned as the same object.
    JPEG stays JPEG, anything else is re-encoded as PNG. Remote (http) URLs are left alone.
    """
    out: list[BaseMessage] = []
    for m in messages:
        if isinstance(m.content, list) and any(
            isinstance(b, dict) and b.get("type") == "image_url" for b in m.content
        ):
            content = [
                _shrink_block(b, max_side) if isinstance(b, dict) and b.get("type") == "image_url" else b
                for b in m.content
            ]
            if any(new is not old for new, old in zip(content, m.content, strict=True)):
                m = m.model_copy(update={"content": content})
        out.append(m)
    return out


def count_images(messages: Sequence[BaseMessage]) -> int:
    """Number of image blocks (``image_url`` or ``image``) over all messages."""
    return sum(
        1
        for m in messages
        if isinstance(m.content, list)
        for b in m.content
        if isinstance(b, dict) and b.get("type") in ("image_url", "image")
    )


def _is_image(block: object) -> bool:
    return isinstance(block, dict) and block.get("type") in ("image_url", "image")


def _block_url(block: dict) -> str:
    image_url = block.get("image_url")
    return str(image_url.get("url", "")) if isinstance(image_url, dict) else str(image_url or block.get("url", ""))


def fit_image_budget(
    messages: Sequence[BaseMessage], max_images: int, keep_urls: Collection[str] = ()
) -> tuple[list[BaseMessage], list[str]]:
    """At most `max_images` image blocks in one request: the oldest others become a text line.

    vLLM limits images per request (``--limit-mm-per-prompt``) and the whole history is resent on
    every call, so images that tools produced earlier are replaced, oldest first, by
    ``"[<label>: image shown earlier, not sent again (at most N images per request)]"``, where the
    label is the text block just before the image in its message ("Normal reference ref0:",
    "zoom0:"). Images whose URL is in `keep_urls` (the query) are never replaced.

    Args:
        messages: the conversation as it would be sent (not modified).
        max_images: the request's image budget (>= the number of kept images).
        keep_urls: ``data:`` URLs of images that must stay.

    Returns:
        (messages to send, the labels of the images replaced, oldest first). Untouched messages
        are the same objects.
    """
    total = count_images(messages)
    excess = total - max_images
    if excess <= 0:
        return list(messages), []
    out: list[BaseMessage] = []
    dropped: list[str] = []
    for m in messages:
        if excess <= 0 or not isinstance(m.content, list) or not any(_is_image(b) for b in m.content):
            out.append(m)
            continue
        content: list = []
        label = ""
        for block in m.content:
            if isinstance(block, dict) and block.get("type") == "text":
                label = " ".join(str(block.get("text", "")).split())[:100].rstrip(":")
            if excess > 0 and _is_image(block) and _block_url(block) not in keep_urls:
                name = label or "an earlier image"
                content.append({"type": "text", "text": f"[{name}: image shown earlier, not sent again "
                                f"(at most {max_images} images per request)]"})
                dropped.append(name)
                excess -= 1
                continue
            content.append(block)
        out.append(m.model_copy(update={"content": content}))
    return out, dropped


def human_message(
    text: str, images: Sequence[np.ndarray] = (), max_side: int | None = None, fmt: str = "PNG"
) -> HumanMessage:
    """A user message: `text` then one ``image_url`` block per image.

    Args:
        text: the prompt text.
        images: HxWx3 uint8 RGB arrays.
        max_side: longer side after downscaling, pixels (None: original size).
        fmt: "PNG" (lossless, default) or "JPEG" (q90, about 5-10x smaller for photos).
    """
    blocks: list = [{"type": "text", "text": text}]
    blocks.extend(image_content_block(px, max_side, fmt) for px in images)
    return HumanMessage(content=blocks)


def stored_image_block(image: StoredImage, max_side: int | None = None, fmt: str = "PNG") -> dict:
    """The ``image_url`` block of a stored image, encoded once and cached by pixel digest.

    The agent sends the query image on every turn; encoding a 1024 px PNG costs 150-600 ms on a
    CPU core, so blocks are kept in an LRU cache of the last 64 (digest, max_side, fmt) keys.
    """
    key = (image.digest, max_side, fmt.upper())
    with _block_lock:
        block = _block_cache.get(key)
        if block is not None:
            _block_cache.move_to_end(key)
            return block
    block = image_content_block(image.pixels, max_side, fmt)
    with _block_lock:
        _block_cache[key] = block
        while len(_block_cache) > _BLOCK_CACHE_SIZE:
            _block_cache.popitem(last=False)
    return block


__all__ = [
    "count_images",
    "data_url_size",
    "fit_image_budget",
    "human_message",
    "limit_image_sizes",
    "merge_system_messages",
    "stored_image_block",
]
