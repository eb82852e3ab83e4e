"""POST /v1/detect (JSON or server-sent events), GET /v1/runs..., POST /v1/runs/{id}/feedback."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from agent.schemas import Verdict
from agent.server.errors import ApiError, internal_error, split_fix
from agent.server.forms import (
    images_field,
    read_form,
    references_field,
    text_field,
    threshold_field,
)
from agent.server.sse import SSE_HEADERS, sse, wants_stream
from agent.server.state import ServerState, server_state

router = APIRouter(prefix="/v1", tags=["detect"])

ERROR_STATUS = {"input": 400, "model": 502, "timeout": 504, "internal": 500}

DETECT_FORM = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["images"],
            "properties": {
                "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                           "description": "one or more images (PNG, JPEG, BMP, TIFF, WEBP)"},
                "category": {"type": "string", "description": "class name, e.g. 'bottle' (needed for memory)"},
                "references": {"type": "array", "items": {"type": "string", "format": "binary"},
                               "description": "normal reference images, or the single text value 'memory'"},
                "threshold": {"type": "number", "minimum": 0, "maximum": 1,
                              "description": "decision threshold on pred_score (default: the server's)"},
                "question": {"type": "string", "description": "optional text for the model"},
            }}}},
    },
    "responses": {"200": {"description": "one record per image: every Verdict field, run_id, image, overlay and "
                                         "map URLs, coverage_hint (null, or a line when most recent verdicts with "
                                         "these references are anomalous); with 'Accept: text/event-stream' the agent's steps as "
                                         "server-sent events (started, step, survey_started, tool, model_turn, "
                                         "verdict, done)"}},
}


def relabel(verdict: Verdict, threshold: float | None) -> Verdict:
    """The verdict at another threshold: the label follows `pred_score >= threshold`, as in fusion."""
    if threshold is None or verdict.status != "ok":
        return verdict
    label = "anomalous" if verdict.pred_score >= threshold else "normal"
    update = {"threshold": threshold, "pred_label": label}
    if label != verdict.pred_label:
        update["explanation"] = (f"{verdict.explanation} (Labelled {label} at the request's threshold "
                                 f"{threshold:.2f}; the agent's own threshold is {verdict.threshold:.2f}.)")
    return verdict.model_copy(update=update)


class _Job:
    """One image of a detect request: its run folder, then the agent's events and verdict."""

    def __init__(self, state: ServerState, upload, category, references, mode, threshold, question) -> None:
        self.state, self.upload, self.category = state, upload, category
        self.references, self.threshold, self.question, self.mode = references, threshold, question, mode
        self.run_id: str | None = None

    def start(self) -> str:
        """Mint the run id and write its folder (once the request holds a worker slot)."""
        if self.run_id is None:
            self.run_id, _ = self.state.runs.new_run(self.upload.data, self.upload.ext, {
                "category": self.category, "references": self.mode, "image": self.upload.name,
                "threshold": self.threshold,
                "reference_paths": self.references if isinstance(self.references, list) else None})
        return self.run_id

    def events(self):
        """The agent's steps, then ``{"type": "verdict", "record": ...}`` (run in a worker thread)."""
        self.start()
        for event in self.state.agent.stream_detect(self.upload.data, category=self.category,
                                                    references=self.references, question=self.question):
            if event["type"] == "verdict":
                verdict = relabel(event["verdict"], self.threshold)
                hint = self.state.coverage.add(self.coverage_key(), self.run_id, verdict.status, verdict.pred_label)
                record = self.state.runs.finish(self.run_id, verdict, self.upload.name,
                                                self.state.config.max_image_pixels, {"coverage_hint": hint})
                yield {"type": "verdict", "record": record}
            else:
                yield event

    def coverage_key(self) -> tuple[str, str]:
        """(category, which references): the uploaded set's id, "memory" or "none" (`CoverageTally`)."""
        if isinstance(self.references, list) and self.references:
            return self.category or "", Path(self.references[0]).parent.name
        return self.category or "", self.mode or "none"

    def record(self) -> dict:
        """Run the job to its end; its record."""
        return [e for e in self.events() if e["type"] == "verdict"][-1]["record"]


async def _parse(request: Request, state: ServerState) -> list[_Job]:
    state.require_ready()
    form = await read_form(request, max_files=state.settings.max_images * 5 + 1)
    uploads = await images_field(form, "images", state, state.settings.max_images)
    category = text_field(form, "category", 200)
    threshold = threshold_field(form)
    question = text_field(form, "question")
    references, mode = await references_field(form, state)
    return [_Job(state, u, category, references, mode, threshold, question) for u in uploads]


def _all_failed(records: list[dict]) -> ApiError | None:
    """When every image failed the same way: that error as the response's status (400 input, 502 model...)."""
    kinds = {r.get("error_kind") for r in records}
    if not records or any(r.get("status") == "ok" for r in records) or len(kinds) != 1:
        return None
    kind = kinds.pop() or "internal"
    cause, fix = split_fix(records[0].get("error") or "failed")
    return ApiError(ERROR_STATUS.get(kind, 500), f"{kind}_error", cause, fix or "see the error message")


@router.post("/detect", openapi_extra=DETECT_FORM, summary="Judge images (JSON, or SSE with Accept: text/event-stream)")
async def detect(request: Request, state: ServerState = Depends(server_state)):
    deadline = time.monotonic() + state.settings.request_timeout_s
    jobs = await _parse(request, state)
    if wants_stream(request):
        state.admission.check()  # 503 now, as a status; the slot itself is taken inside the stream
        return StreamingResponse(_stream(state, jobs, deadline), media_type="text/event-stream", headers=SSE_HEADERS)

    records = await state.run_blocking(lambda: [job.record() for job in jobs], deadline)
    error = _all_failed(records)
    if error is not None:
        return JSONResponse({**error.body(), "results": records}, status_code=error.status)
    return {"results": records}


async def _stream(state: ServerState, jobs: list[_Job], deadline: float):
    def work(emit) -> list[str]:
        for index, job in enumerate(jobs):
            emit({"type": "started", "index": index, "run_id": job.start(), "image": job.upload.name})
            for event in job.events():
                emit({**event, "index": index, "run_id": job.run_id})
        return [j.run_id for j in jobs if j.run_id]

    try:
        async for event in state.stream_blocking(work, deadline):
            if event["type"] == "result":
                yield sse("done", {"runs": event["value"]})
            else:
                yield sse(event["type"], event)
    except ApiError as exc:  # 503/504 after the response started: said in the stream
        yield sse("error", state.redactor.json(exc.body()))
    except Exception as exc:  # noqa: BLE001 - the response has started: said in the stream
        yield sse("error", internal_error(exc).body())


@router.get("/runs", summary="Recent runs, newest first")
async def recent_runs(limit: int = 20, disputed: bool | None = None, state: ServerState = Depends(server_state)):
    """`?disputed=1`: only the verdicts whose model disagreed with the measured evidence (`disputed=0`: the others)."""
    return {"runs": await asyncio.to_thread(state.runs.recent, max(1, min(limit, 200)), disputed)}


@router.get("/runs/{run_id}", summary="A run's record (the verdict with its URLs)")
async def run_record(run_id: str, state: ServerState = Depends(server_state)):
    return state.runs.record(run_id)


@router.get("/runs/{run_id}/{name}", summary="A run's file: image, overlay.png, map.png, heat.png, e<i>.png")
async def run_file(run_id: str, name: str, state: ServerState = Depends(server_state)):
    path = state.runs.file(run_id, name)
    return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


class Feedback(BaseModel):
    """The correct label of a run's image (and an optional note): stored in memory as a hard normal or a
    labelled anomaly, so the next similar image is judged with it."""

    label: Literal["normal", "anomalous"]
    note: str | None = Field(None, max_length=2000, description="what a person sees (becomes the example's description)")
    defect_type: str | None = Field(None, max_length=100, description="defect type of an anomalous image")


@router.post("/runs/{run_id}/feedback", summary="Store the run's image in memory with its correct label")
async def feedback(run_id: str, body: Feedback, state: ServerState = Depends(server_state)):
    store = state.memory()
    meta = state.runs.meta(run_id)
    if not meta.get("category"):
        raise ApiError(400, "missing_category", f"run {run_id} was judged without a category, so memory cannot file it",
                       "judge the image again with a category, then send feedback on that run")
    record = state.runs.record(run_id)
    path = state.runs.file(run_id, "image")

    def store_it():
        from agent.feedback import record_feedback
        from memory.store import MemoryStoreError, content_id

        existed = store.has(content_id(path.read_bytes()))
        try:
            learned = record_feedback(state.agent.runtime, store, path, meta["category"], body.label,
                                      record.get("pred_score"), run_id=run_id, defect_type=body.defect_type,
                                      note=body.note)
        except MemoryStoreError as exc:
            cause, fix = split_fix(str(exc))
            raise ApiError(409, "conflict", cause, fix or "remove the stored example first") from None
        return learned, existed

    learned, existed = await asyncio.to_thread(store_it)
    state.coverage.confirm(run_id, body.label, learned.example.id)
    example = learned.example
    was = record.get("pred_label")
    stored = {**example.model_dump(mode="json", exclude={"image_path"}), "provenance": "feedback"}
    result = {"run_id": run_id, "stored": stored, "example_id": example.id, "new": not existed,
              "undo": f"DELETE /v1/memory/examples/{example.id}" if not existed else None,
              "label": body.label, "verdict_was": was, "verdict_was_right": was == body.label if was else None,
              "message": learned.message,
              "threshold": {"before": learned.threshold_before, "after": learned.threshold_after}}
    (state.runs.folder(run_id) / "feedback.json").write_text(json.dumps(result))
    return result
