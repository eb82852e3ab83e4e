"""retrieve_memory: nearest examples of the category and its class notes from the example store."""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache

from agent.errors import UserInputError
from agent.runtime import AgentRuntime
from agent.state import State

FEEDBACK_SOURCE = "feedback"  # a memory example stored from an inspector's feedback has a source starting so


def use_inspector_examples(res, examples: list[dict], wants_refs: bool) -> bool:
    """Put what the inspector taught to use in this run (no model needed):

    - labelled anomalies become known defects the tools compare with (`ToolContext.known_defects`,
      `tools.defect_bank`), named by their defect type and id;
    - with references given by the user (not "memory"), normals stored from feedback (false alarms marked
      normal: hard normals) join the references; at most `max_memory_normals`, nearest first, as retrieved.
      With references from memory every retrieved normal is already a reference.

    Returns True when the references changed.
    """
    for e in examples:
        ex = e["example"]
        if ex["label"] != "anomalous":
            continue
        what = ex.get("defect_type") or "anomaly"
        image_id = res.images.add_file(ex["image_path"], prefix="known")
        res.ctx.known_defects.append((image_id, f"'{what}' (memory example {ex['id'][:8]})"))
    if wants_refs or not res.ctx.reference_ids:
        return False
    hard = sorted((e["example"] for e in examples
                   if e["example"]["label"] == "normal" and str(e["example"].get("source") or "").startswith(FEEDBACK_SOURCE)),
                  key=lambda ex: ex["id"])  # a fixed order: the same set makes the same bank
    for ex in hard:
        res.ctx.reference_ids.append(res.images.add_file(ex["image_path"], prefix="ref"))
    if hard:
        res.notes.append(f"{len(hard)} normal example(s) the inspector marked as false alarms joined the references")
    return bool(hard)


@lru_cache(maxsize=4096)
def example_pixel_digest(example_id: str, image_path: str, max_pixels: int) -> str | None:
    """sha256 of a memory example's decoded RGB pixels (the query's `StoredImage.digest` form), or None
    when its image cannot be read. Cached by example id: the id is the hash of the file's bytes."""
    from tools.images import load_image

    try:
        return hashlib.sha256(load_image(image_path, max_pixels).tobytes()).hexdigest()
    except Exception:  # noqa: BLE001 - an unreadable example is judged by its id alone
        return None


def not_the_query(hits: list, query_digest: str, max_pixels: int, k: int) -> list:
    """The first `k` hits whose image is not the query's own pixels (issue 22: a test image that
    feedback or ``memory import --with-anomalies`` put into memory is never shown back as an example)."""
    kept = [(ex, sim) for ex, sim in hits if example_pixel_digest(ex.id, ex.image_path, max_pixels) != query_digest]
    return kept[:k]


def retrieve_memory(state: State, *, rt: AgentRuntime) -> dict:
    """Retrieve the nearest normals (up to `max_memory_normals`) and, separately, the nearest labelled
    anomalies (up to `max_memory_anomalies`) of the category, and its notes; with references="memory",
    the retrieved normals become the run's references."""
    start = time.perf_counter()
    category = state.get("category")
    wants_refs = state.get("references") == "memory"
    store = rt.memory()
    if store is None or not category:
        if wants_refs:
            where = rt.config.memory_host or rt.config.memory_path
            msg = (
                f"references='memory' but there is no memory store at {where} or no --category. "
                "Fix: run `anomaly-agent memory import ROOT` (or `memory add`) and pass --category"
            )
            raise UserInputError(msg)
        return {"memory_examples": [], "notes": "", "timings": {"memory_ms": 0.0}}
    res = rt.resources(state["run_id"])
    embedder = rt.embedder()
    query = res.images.get(state["query_id"])
    query_vec = embedder.embed(query.pixels)
    hits = []  # stays empty when no example of this category is embedded by this model
    if embedder.model_id in store.embedding_models(category):
        # by label, each with its own cap: a few hundred imported normals never crowd out the labelled anomalies
        for label, k in (("normal", rt.config.max_memory_normals), ("anomalous", rt.config.max_memory_anomalies)):
            if k <= 0:
                continue
            # one more than needed: the query's own image, when stored, is the nearest and is left out
            near = store.nearest(category, query_vec, k=k + 1, label=label, embedding_model=embedder.model_id)
            hits += not_the_query(near, query.digest, rt.config.max_image_pixels, k)
    examples = [{"example": ex.model_dump(mode="json"), "similarity": float(sim)} for ex, sim in hits]
    update: dict = {"memory_examples": examples}
    learned = use_inspector_examples(res, examples, wants_refs)
    if learned:
        update["reference_ids"] = list(res.ctx.reference_ids)
    if wants_refs:
        normals = [e for e in examples if e["example"]["label"] == "normal"]
        if not normals:
            msg = f"memory has no normal examples of {category!r}. Fix: `anomaly-agent memory import ROOT --category {category}`"
            raise UserInputError(msg)
        # in a fixed order (by example id), not by similarity: the same normals then make the same reference
        # bank for every query, and it is built once instead of once per order
        paths = [e["example"]["image_path"] for e in sorted(normals, key=lambda e: e["example"]["id"])]
        for path in paths:
            res.ctx.reference_ids.append(res.images.add_file(path, prefix="ref"))
        update["reference_ids"] = list(res.ctx.reference_ids)
        update["reference_paths"] = paths
    from memory.examples import render_notes

    update["notes"] = render_notes(store.list_notes(category))
    update["timings"] = {"memory_ms": (time.perf_counter() - start) * 1000.0}
    return update
