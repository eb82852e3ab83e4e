"""Multipart fields shared by detect, sessions and memory routes: images, category, references, threshold."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import FormData, UploadFile

from agent.server.errors import ApiError
from agent.server.uploads import safe_name


@dataclass
class Upload:
    """One validated uploaded image: its bytes, extension (".png") and display name."""

    data: bytes
    ext: str
    name: str


async def read_form(request, max_files: int) -> FormData:
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", f"expected multipart/form-data, got {ctype or 'no content type'!r}",
                       "send the images as multipart form fields (curl -F images=@part.png)")
    return await request.form(max_files=max_files, max_fields=100)


async def images_field(form: FormData, field: str, state, limit: int, required: bool = True) -> list[Upload]:
    """The validated images of a multipart field (400 when a value is text, not a file); they are decoded in a
    worker thread under the admission queue (`ServerState.check_images`)."""
    values = form.getlist(field)
    if required and not values:
        raise ApiError(400, "missing_field", f"no {field!r} field in the form",
                       f"send at least one image as the {field!r} field (curl -F {field}=@part.png)")
    if len(values) > limit:
        raise ApiError(400, "too_many_images", f"{len(values)} {field} in one request (at most {limit})",
                       "split them over several requests")
    items = []
    for i, value in enumerate(values):
        if not isinstance(value, UploadFile):
            raise ApiError(400, "invalid_field", f"{field!r} value {i} is text, not a file",
                           f"send files in {field!r} (curl -F {field}=@part.png)")
        items.append((await value.read(), safe_name(value.filename, f"{field}{i}")))
    extensions = await state.check_images(items) if items else []
    return [Upload(data, ext, name) for (data, name), ext in zip(items, extensions, strict=True)]


def text_field(form: FormData, field: str, max_len: int = 2000) -> str | None:
    value = form.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "invalid_field", f"{field!r} must be text, not a file", f"send {field} as a text field")
    value = value.strip()
    if len(value) > max_len:
        raise ApiError(400, "invalid_field", f"{field!r} is longer than {max_len} characters", f"shorten {field}")
    return value or None


def threshold_field(form: FormData) -> float | None:
    text = text_field(form, "threshold", 40)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise ApiError(400, "invalid_field", f"threshold must be a number in [0, 1], got {text!r}",
                       "send e.g. threshold=0.5")
    return value


async def references_field(form: FormData, state) -> tuple[list[str] | str | None, str | None]:
    """The references: uploaded files (stored once per content; their paths), "memory", or None.

    Returns:
        (what to pass to `AnomalyAgent.detect`, "upload" | "memory" | None).
    """
    values = form.getlist("references")
    if not values:
        return None, None
    if len(values) == 1 and isinstance(values[0], str):
        if values[0].strip().lower() == "memory":
            return "memory", "memory"
        raise ApiError(400, "invalid_field", f"references must be image files or the text 'memory', got {values[0][:40]!r}",
                       "upload normal images as 'references' (repeat the field), or send references=memory")
    uploads = await images_field(form, "references", state, state.settings.max_images * 4)
    return state.runs.reference_set([(u.data, u.ext) for u in uploads]), "upload"
