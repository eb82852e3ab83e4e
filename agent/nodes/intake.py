"""intake: validate the query and reference images into the run's `ImageStore`."""

from __future__ import annotations

import time

from agent.runtime import AgentRuntime
from agent.state import State
from tools.references import resolve_reference_items


def intake(state: State, *, rt: AgentRuntime) -> dict:
    """Load the query as "query" and the references as "ref0".. (ids handed to tools and model).

    `references` may be a list of paths (or, from the Python API, PIL images / numpy arrays), a folder, a
    glob, "memory" (filled by retrieve_memory) or None.
    Raises the `ImageInputError` family / `UserInputError` for bad input.
    """
    start = time.perf_counter()
    run_id = state["run_id"]
    res = rt.new_run(run_id)
    res.ctx.category = state.get("category")
    query_id = res.images.add_file(state["image"], image_id="query")
    res.ctx.query_id = query_id
    refs = state.get("references")
    paths: list[str] = []
    if refs is not None and not (isinstance(refs, str) and refs == "memory"):
        items, note = rt.select_references(resolve_reference_items(refs))
        if note:
            res.notes.append(note.removeprefix("note: ").replace("Fix: ", "To change this: "))
        for item in items:  # paths, or images given as objects through the Python API
            res.ctx.reference_ids.append(res.images.add_file(item, prefix="ref"))
        paths = [i for i in items if isinstance(i, str)]
    return {
        "query_id": query_id,
        "reference_ids": list(res.ctx.reference_ids),
        "reference_paths": paths,
        "model_calls": 0,
        "tool_calls": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "reflections": 0,
        "timings": {"intake_ms": (time.perf_counter() - start) * 1000.0},
    }
