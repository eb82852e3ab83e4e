"""An inspector's correction, learned without a model: store the image, move the category's threshold, say so.

`record_feedback` is what the server's feedback route, the CLI (`memory feedback`) and the streaming evaluation
share:
- the image goes into memory with its true label and `source` "feedback on run <id>" (a labelled anomaly
  becomes a known defect the tools compare new images with; a normal becomes a hard normal that joins
  the category's references: `agent.nodes.memory.use_inspector_examples`);
- the verdict's score and the true label refit the category's operating point (`memory.operating_point`);
- the returned message says exactly what changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from memory.operating_point import describe_move


@dataclass
class FeedbackResult:
    """What one piece of feedback changed.

    Attributes:
        example: the stored `MemoryExample`.
        threshold_before / threshold_after: the category's operating point around this label.
        message: one sentence for the inspector ("stored as a labelled anomaly of 'gasket'; ...").
    """

    example: object
    threshold_before: float
    threshold_after: float
    message: str


def record_feedback(runtime, store, image_path, category: str, label: str, score: float | None, *,
                    run_id: str = "", defect_type: str | None = None, note: str | None = None) -> FeedbackResult:
    """Store `image_path` as a labelled example of `category` and refit the category's threshold.

    Args:
        runtime: the `AgentRuntime` (its embedder and operating points).
        store: the memory store to write to.
        image_path: the judged image's file.
        label: the true label, "normal" or "anomalous".
        score: the verdict's fused score (None: the threshold is not refit, e.g. an error verdict).
        run_id: the run the feedback is about (recorded in the example's source; empty: no run, as on the CLI).
    """
    from tools.images import load_image

    embedder = runtime.embedder()
    vector = embedder.embed(load_image(str(image_path), runtime.config.max_image_pixels))
    with open(image_path, "rb") as f:
        data = f.read()
    example = store.add(data, category, label, vector, embedder.model_id,
                        defect_type=defect_type if label == "anomalous" else None,
                        description=note, source=f"feedback on run {run_id}" if run_id else "feedback")
    points = runtime.operating_points()
    if score is None:
        point = points.get(example.category)
        before = after = point
    else:
        before, after = points.add(example.category, example.id, label, float(score))
    cat = example.category
    if label == "anomalous":
        what = f"stored as a labelled anomaly of '{cat}'; new '{cat}' images are compared with it"
    else:
        what = (f"stored as a normal example of '{cat}'; it joins the references of new '{cat}' images "
                "(a hard normal)")
    move = describe_move(cat, before, after, label) if score is not None else "the threshold was not refit (no score)"
    if "threshold" in runtime.config.model_fields_set:
        move += f" (this process uses the configured threshold {runtime.config.threshold:.2f})"
    return FeedbackResult(example, before.threshold, after.threshold, f"{what}; {move}.")
