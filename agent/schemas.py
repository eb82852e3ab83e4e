"""Core result and request types (DESIGN.md, "Core types"). All round-trip through JSON.

Field names follow anomalib's (`pred_score`, `pred_label`, `explanation`) so metrics bind by name.
`Region` and `Evidence` are defined in `tools.types` (tools must not import agent) and re-exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from tools.types import Evidence, Region

__all__ = ["Budget", "Evidence", "Query", "Region", "Usage", "Verdict"]

Label = Literal["normal", "anomalous"]


class Budget(BaseModel):
    """Bounds on one query's agent loop."""

    max_model_calls: int = Field(8, ge=1)
    max_tool_calls: int = Field(12, ge=0)
    max_images_per_request: int = Field(4, ge=1)
    max_wall_s: float = Field(180.0, gt=0)


class Query(BaseModel):
    """One detection request.

    Attributes:
        image: path to the image (or its encoded bytes).
        category: free-text class name ("bottle"); None = unknown.
        references: normal reference images: a list of paths, a folder, a glob, "memory" (retrieve
            from the memory store), or None (zero-shot).
        question: chat text, if any.
        budget: loop bounds.
    """

    image: str | bytes
    category: str | None = None
    references: list[str] | str | None = None
    question: str | None = None
    budget: Budget = Field(default_factory=Budget)

    @model_validator(mode="before")
    @classmethod
    def _paths_to_str(cls, data):
        if isinstance(data, dict):
            data = dict(data)
            if isinstance(data.get("image"), Path):
                data["image"] = str(data["image"])
            refs = data.get("references")
            if isinstance(refs, Path):
                data["references"] = str(refs)
            elif isinstance(refs, list | tuple):
                data["references"] = [str(r) for r in refs]
        return data


class Usage(BaseModel):
    """What a query consumed."""

    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: int = 0


class Verdict(BaseModel):
    """The answer for one image.

    Attributes:
        image: the input path as given (None for bytes).
        category: the category the query named.
        pred_label: "normal" | "anomalous"; None only when status is "error".
        pred_score: fused anomaly score in [0, 1]; the label is `pred_score >= threshold`.
        threshold: the decision threshold used.
        threshold_source: where it came from: "default", "configured" (a flag, file or environment), or
            "refit for '<category>' from N normal and M anomalous labelled verdict(s)" (`memory.operating_point`).
        score_source: how the model's part of the score was obtained: "logprobs" (token
            probabilities), "logprobs-partial" (the label tokens carried under half the probability
            at the label position: a weak reading, at half the model's weight), "label" (the model gave
            no probabilities; its label was used), or "tools" (no model: tools and fusion only).
        defect_type: short name of the defect ("scratch", "missing part") or None.
        regions: anomalous regions, boxes in original-image pixels.
        explanation: plain words citing the evidence by tool name and number. Never empty when ok.
        evidence: every tool result that informed the verdict.
        backend / model_id / prompt_hash: the backend actually used ("openai", "transformers",
            "scripted", "none"; never "auto"), the served or loaded model's id, and the prompt set.
        usage / timings: consumption and wall times in ms per stage.
        budget_exhausted: the loop stopped on its budget and decided with what it had.
        disputed: the model's label is on the other side of the threshold from the measured reading (the
            survey's fused reading, or the tools' when there is no survey); the explanation then gives the
            model's reason and the evidence side by side, and what the policy did.
        policy: the safety policy that decided: "evidence-stands" (a measured reading clearly beyond the
            threshold stays anomalous whatever the model says) or "model-decides" (README "Safety policy").
        status / error: "ok", or "error" with the reason (a batch never drops an item silently).
        error_kind: "input" (bad image/config, exit 2), "model" (model/server failure, exit 3),
            "timeout" (the item ran past its time limit, exit 3), "worker" (the Ray worker judging it
            died, on every try; `eval --ray`) or "internal" (a bug, exit 4).
    """

    image: str | None = None
    category: str | None = None
    pred_label: Label | None = None
    pred_score: float | None = Field(None, ge=0.0, le=1.0)
    threshold: float = 0.5
    threshold_source: str = "default"
    score_source: Literal["logprobs", "logprobs-partial", "label", "tools"] = "tools"
    defect_type: str | None = None
    regions: list[Region] = Field(default_factory=list)
    explanation: str = ""
    evidence: list[Evidence] = Field(default_factory=list)
    backend: str | None = None
    model_id: str | None = None
    prompt_hash: str | None = None
    usage: Usage = Field(default_factory=Usage)
    timings: dict[str, float] = Field(default_factory=dict)
    budget_exhausted: bool = False
    disputed: bool = False
    policy: Literal["evidence-stands", "model-decides"] = "evidence-stands"
    status: Literal["ok", "error"] = "ok"
    error: str | None = None
    error_kind: Literal["input", "model", "timeout", "worker", "internal"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Verdict:
        if self.status == "ok":
            if self.pred_label is None or self.pred_score is None:
                msg = "an ok verdict needs pred_label and pred_score"
                raise ValueError(msg)
            if not self.explanation.strip():
                msg = "an ok verdict needs an explanation (a detection without one is a bug)"
                raise ValueError(msg)
        elif not self.error:
            msg = "an error verdict needs its reason in `error`"
            raise ValueError(msg)
        return self

    def maps(self) -> dict[str, Any]:
        """Each tool's HxW float32 anomaly map (raw units, original resolution) as a numpy array, by tool
        name (the last call of each tool that made a map). Read from the files behind `map_path`: without
        --out / trace_dir they live in the process's temporary folder until it exits."""
        out: dict[str, Any] = {}
        for ev in self.evidence:
            amap = ev.map_array()
            if amap is not None:
                out[ev.tool] = amap
        return out

    @classmethod
    def failed(cls, image: str | None, error: str, category: str | None = None,
               kind: Literal["input", "model", "timeout", "worker", "internal"] = "input") -> Verdict:
        """An error record for an item that could not be judged."""
        return cls(image=image, category=category, status="error", error=error, error_kind=kind)
