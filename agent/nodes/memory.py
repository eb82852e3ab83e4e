"""retrieve_memory: nearest examples of the category and its class notes from the example store."""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache

from agent.errors import UserInputError
from agent.runtime import AgentRuntime
from agent.state import State

FEEDBACK_SOURCE = "feedback"  # a memory example stored from an inspector's feedback has a source starting so


def is_hard_normal(example: dict) -> bool:
    """A memory example (as JSON) stored as normal from an inspector's feedback (a false alarm)."""
    return example["label"] == "normal" and str(example.get("source") or "").startswith(FEEDBACK_SOURCE)


def use_inspector_examples(res, examples: list[dict], wants_refs: bool) -> bool:
    """Put what the inspector taught to use in this run (no model needed):

    - labelled anomalies become known defects the tools compare with (`ToolContext.known_defects`,
      `tools.defect_bank`), named by their defect type and id;
    - with references given by the user (not "memory"), normals stored from feedback (false alarms marked
      normal: hard normals) join the references; at most `max_memory_normals`, nearest first, as retrieved.
      With references from memory every retrieved normal is already a reference. Either way a hard normal
      only widens the bank (`ToolContext.bank_only_ids`): the edge of normal stays calibrated on the other
      references, so one unusual normal does not lower every score that the threshold was refit on.

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
    hard = sorted((e["example"] for e in examples if is_hard_normal(e["example"])),
                  key=lambda ex: ex["id"])  # a fixed order: the same set makes the same bank
    for ex in hard:
        image_id = res.images.add_file(ex["image_path"], prefix="ref")
        res.ctx.reference_ids.append(image_id)
        res.ctx.bank_only_ids.add(image_id)
    if hard:
        res.notes.append(f"{len(hard)} normal example(s) the inspector marked as false alarms joined the references")
    return bool(hard)


# Two files are one image when their 64x64 grey thumbnails differ by under SAME_IMAGE_MEAN_DIFF grey levels on
# average and nowhere by SAME_IMAGE_MAX_DIFF or more (and their aspect ratios agree). Measured 2026-12-04 on
# realsets and synthetic images: JPEG re-encodes (quality 60-90) differ by <= 0.93 on average, at most 5; copies
# rescaled by half and back at most 20; distinct normal images of one category by >= 5.2 on average; the
# same image with a dark defect 1/32 of its side by >= 60 somewhere (so a labelled defect photo of the query's
# own part is kept).
SAME_IMAGE_MEAN_DIFF = 2.0
SAME_IMAGE_MAX_DIFF = 24.0
THUMB_SIDE = 64


def thumbnail(pixels) -> tuple[float, object]:
    """(width / height, THUMB_SIDE x THUMB_SIDE float32 grey thumbnail) of HxWx3 uint8 RGB pixels."""
    import cv2
    import numpy as np

    grey = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    return pixels.shape[1] / max(1, pixels.shape[0]), small


def same_image(a: tuple[float, object] | None, b: tuple[float, object] | None) -> bool:
    """Are two thumbnails one image (the same pixels, re-encoded or rescaled)?"""
    import numpy as np

    if a is None or b is None or abs(a[0] - b[0]) > 0.02 * max(a[0], b[0]):
        return False
    diff = np.abs(a[1] - b[1])
    return float(diff.mean()) < SAME_IMAGE_MEAN_DIFF and float(diff.max()) < SAME_IMAGE_MAX_DIFF


@lru_cache(maxsize=4096)
def example_image_keys(example_id: str, image_path: str, max_pixels: int,
                       with_thumbnail: bool) -> tuple[str, tuple[float, object] | None] | None:
    """(sha256 of a memory example's decoded RGB pixels, in the query's `StoredImage.digest` form; its
    `thumbnail` when asked for, else None) from one decode, or None when its image cannot be read. Cached by
    example id: the id is the hash of the file's bytes."""
    from tools.images import load_image

    try:
        pixels = load_image(image_path, max_pixels)
    except Exception:  # noqa: BLE001 - an unreadable example is judged by its id alone
        return None
    return hashlib.sha256(pixels.tobytes()).hexdigest(), thumbnail(pixels) if with_thumbnail else None


def not_the_query(hits: list, query, max_pixels: int, k: int, leave_out: str = "same-pixels") -> list:
    """The first `k` hits whose image is not the query's own (issue 22: a test image that feedback or
    ``memory import --with-anomalies`` put into memory is never shown back as an example, nor used as a
    reference or a known defect).

    Args:
        query: the query's `StoredImage` (its digest and pixels).
        leave_out: "same-pixels" (identical decoded pixels) or "near-copies" (also `same_image`: re-encoded or
            rescaled copies, and re-captures that look the same; for evaluations).
    """
    near = leave_out == "near-copies"
    thumb = thumbnail(query.pixels) if near else None

    def is_query(ex) -> bool:
        keys = example_image_keys(ex.id, ex.image_path, max_pixels, near)
        return keys is not None and (keys[0] == query.digest or (near and same_image(keys[1], thumb)))

    return [(ex, sim) for ex, sim in hits if not is_query(ex)][:k]


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
            hits += not_the_query(near, query, rt.config.max_image_pixels, k, rt.config.memory_leave_out)
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
        normals = sorted(normals, key=lambda e: e["example"]["id"])
        paths = [e["example"]["image_path"] for e in normals]
        for e in normals:
            image_id = res.images.add_file(e["example"]["image_path"], prefix="ref")
            res.ctx.reference_ids.append(image_id)
            if is_hard_normal(e["example"]):
                res.ctx.bank_only_ids.add(image_id)
        update["reference_ids"] = list(res.ctx.reference_ids)
        update["reference_paths"] = paths
    from memory.examples import render_notes

    update["notes"] = render_notes(store.list_notes(category))
    update["timings"] = {"memory_ms": (time.perf_counter() - start) * 1000.0}
    return update
