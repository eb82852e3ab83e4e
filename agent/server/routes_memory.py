"""Memory routes: stats, add an example (multipart), add a class note."""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from agent.server.errors import ApiError, split_fix
from agent.server.forms import images_field, read_form, text_field
from agent.server.state import ServerState, server_state

router = APIRouter(prefix="/v1/memory", tags=["memory"])

EXAMPLE_FORM = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["image", "category", "label"],
        "properties": {
            "image": {"type": "string", "format": "binary"},
            "category": {"type": "string"},
            "label": {"type": "string", "enum": ["normal", "anomalous"]},
            "defect_type": {"type": "string"},
            "description": {"type": "string"},
        }}}}},
}


def _store_error(exc: Exception) -> ApiError:
    cause, fix = split_fix(str(exc))
    return ApiError(409 if "already" in cause else 400, "memory_error", cause, fix or "see the message")


@router.get("/stats", summary="Examples per category and label, notes, embedding models")
async def stats(state: ServerState = Depends(server_state)):
    store = state.memory()

    def read():
        data = store.stats()
        return {"store": "chroma server" if state.config.memory_host else "local",
                "categories": {c: {**row, "embedding_models": store.embedding_models(c)} for c, row in data.items()}}

    return await asyncio.to_thread(read)


@router.post("/examples", openapi_extra=EXAMPLE_FORM, summary="Add an image as a normal or labelled anomalous example")
async def add_example(request: Request, state: ServerState = Depends(server_state)):
    store = state.memory()
    form = await read_form(request, max_files=2)
    upload = (await images_field(form, "image", state, 1))[0]
    category = text_field(form, "category", 200)
    label = text_field(form, "label", 20)
    if not category:
        raise ApiError(400, "missing_field", "no category", "send category=<class name>")
    if label not in ("normal", "anomalous"):
        raise ApiError(400, "invalid_field", f"label must be normal or anomalous, got {label!r}", "send label=normal or label=anomalous")
    defect = text_field(form, "defect_type", 100)
    description = text_field(form, "description")

    def add():
        from memory.store import MemoryStoreError
        from tools.images import load_image

        embedder = state.agent.runtime.embedder()
        vector = embedder.embed(load_image(upload.data, state.config.max_image_pixels))
        try:
            return store.add(upload.data, category, label, vector, embedder.model_id,
                             defect_type=defect if label == "anomalous" else None, description=description,
                             source=f"upload {upload.name}")
        except MemoryStoreError as exc:
            raise _store_error(exc) from None

    example = await asyncio.to_thread(add)
    return {"stored": example.model_dump(mode="json", exclude={"image_path"})}


NOTE_RELIABILITY = 0.8  # a note sent over HTTP: a person's word, not verified (1.0 is for the CLI's own notes)
EXAMPLE_ID = re.compile(r"[0-9a-f]{32}")
NOTE_ID = re.compile(r"[0-9a-f]{16}")


class NoteIn(BaseModel):
    """A class note. Its provenance ("user") is set by the server; reliability at most 0.8 (the default)."""

    model_config = ConfigDict(extra="forbid")
    category: str = Field(..., min_length=1, max_length=200)
    text: str = Field(..., min_length=1, max_length=2000, description="e.g. 'a bright rim is normal'")
    reliability: float = Field(NOTE_RELIABILITY, ge=0.0, le=NOTE_RELIABILITY,
                               description="how much the note counts (at most 0.8 over HTTP)")


@router.post("/notes", summary="Add a class note (e.g. 'a bright seam on the left edge is normal')")
async def add_note(body: NoteIn, state: ServerState = Depends(server_state)):
    store = state.memory()
    if not body.category.strip() or not body.text.strip():
        raise ApiError(400, "invalid_field", "category and text must not be blank", "send a category and the note's text")

    def add():
        from memory.store import MemoryStoreError

        try:
            return store.add_note(body.category, body.text, "user", body.reliability)
        except MemoryStoreError as exc:
            raise _store_error(exc) from None

    note = await asyncio.to_thread(add)
    return {"note": note.model_dump(mode="json")}


def _gone(kind: str, item_id: str) -> ApiError:
    where = "GET /v1/memory/notes" if kind == "note" else "the reply that stored it ('stored.id')"
    return ApiError(404, "not_found", f"no memory {kind} with id {item_id[:40]!r}", f"use an id from {where}")


@router.delete("/examples/{example_id}", summary="Remove an example (e.g. undo a feedback)")
async def delete_example(example_id: str, state: ServerState = Depends(server_state)):
    store = state.memory()
    if not EXAMPLE_ID.fullmatch(example_id):
        raise _gone("example", example_id)

    def delete():
        from memory.store import ExampleNotFoundError

        try:
            return store.delete(example_id)
        except ExampleNotFoundError:
            raise _gone("example", example_id) from None

    def revert() -> list[str]:
        from memory.operating_point import describe_move

        return [describe_move(b.category, b, a) for b, a in state.agent.runtime.operating_points().remove(example_id)]

    await asyncio.to_thread(delete)
    state.coverage.undo(example_id)
    moves = await asyncio.to_thread(revert)
    message = "removed from memory; it no longer joins references or known defects"
    return {"deleted": example_id, "thresholds": moves, "message": "; ".join([message, *moves]) + "."}


@router.delete("/notes/{note_id}", summary="Remove a class note")
async def delete_note(note_id: str, state: ServerState = Depends(server_state)):
    store = state.memory()
    if not NOTE_ID.fullmatch(note_id):
        raise _gone("note", note_id)

    def delete():
        from memory.store import ExampleNotFoundError

        try:
            store.remove_note(note_id)
        except ExampleNotFoundError:
            raise _gone("note", note_id) from None

    await asyncio.to_thread(delete)
    return {"deleted": note_id}


@router.get("/thresholds", summary="Each category's threshold refit from feedback, and every move in its history")
async def thresholds(category: str | None = None, state: ServerState = Depends(server_state)):
    from memory.store import normalize_category

    runtime = state.require_ready().runtime
    try:
        wanted = normalize_category(category) if category is not None else None
    except ValueError as exc:
        raise ApiError(400, "invalid_category", str(exc).split(". Fix:")[0],
                       "pass a category name, or leave the parameter out for all") from None

    def read():
        return {p.category: p.as_dict() for p in runtime.operating_points().listed(wanted)}

    try:
        found = await asyncio.to_thread(read)
    except ValueError as exc:  # an unreadable operating-points file (the message says how to start over)
        cause, fix = split_fix(str(exc))
        raise ApiError(500, "operating_points_unreadable", cause, fix or "see the message") from None
    configured = runtime.config.threshold if "threshold" in runtime.config.model_fields_set else None
    return {"categories": found, "configured_threshold": configured}


@router.get("/notes", summary="Class notes (of a category)")
async def list_notes(category: str | None = None, state: ServerState = Depends(server_state)):
    store = state.memory()
    notes = await asyncio.to_thread(store.list_notes, category)
    return {"notes": [n.model_dump(mode="json") for n in notes]}
