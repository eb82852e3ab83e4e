"""Result types shared by the tools and the agent (the agent re-exports them from `agent.schemas`).

They live in `tools/` because `tools` must not import `agent` (see DESIGN.md, dependency direction).
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator


class Region(BaseModel):
    """A region of the *original* query image.

    Attributes:
        bbox_xyxy: (x0, y0, x1, y1) in pixels of the original image; x1/y1 exclusive.
        score: the region's anomaly score (tool-specific scale, higher = more anomalous), or None.
        mask_path: optional path to a 0/255 PNG mask of the region at the original resolution.
        label: short free text ("scratch", "missing part", "map peak").
    """

    bbox_xyxy: tuple[int, int, int, int]
    score: float | None = None
    mask_path: str | None = None
    label: str = ""

    @field_validator("bbox_xyxy")
    @classmethod
    def _ordered(cls, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = box
        if x1 < x0 or y1 < y0:
            msg = f"bbox_xyxy must satisfy x0<=x1 and y0<=y1, got {box}"
            raise ValueError(msg)
        return box


class KnownDefect(BaseModel):
    """What a labelled anomalous example did to a score (patch_knn's known-defect boost).

    Attributes:
        example: the example as the explanation cites it ("'crack' (memory example 3f2a9c1b)").
        ratio: d_normal / d_defect at the image's strongest boosted patch (> 1: nearer to that defect's
            patches than to any normal patch).
        raw_before: the tool's raw score without the known defects.
        raw_after: its raw score with them (the one reported).
    """

    example: str
    ratio: float
    raw_before: float
    raw_after: float


class HardNormals(BaseModel):
    """What the inspector's hard normals (false alarms marked normal, which widen the bank) did to a score.

    Attributes:
        n: how many of the references were hard normals.
        raw_without: the tool's raw score against the other references alone.
        score_without: its calibrated score then (against those references' own calibration).
        reference_scores_without: those references' own raw scores behind that calibration.
    """

    n: int
    raw_without: float
    score_without: float
    reference_scores_without: list[float] = Field(default_factory=list)


class Evidence(BaseModel):
    """One tool call's measured result, as the agent records it.

    Attributes:
        tool: tool name (`patch_knn`, ...).
        args: the arguments the tool was called with (JSON-able).
        score: calibrated anomaly score in [0, 1] (0.5 = at the edge of what the references show),
            or None for tools that do not score (zoom, enhance).
        raw_score: the tool's uncalibrated score (its own units), or None.
        regions: top regions, in original-image pixels.
        summary: one paragraph a person (and the model) can read; cites numbers.
        map_path: optional path to the HxW anomaly map (PNG, 0..255) at the original resolution.
        image_ids: ids of images the tool registered (crops, aligned references).
        normal_ratio: raw score / the references' typical own score (1 = as different as the normal
            references are from each other), None where the tool has no such scale.
        log_odds: the calibrated score's unbounded log-odds (keeps the order beyond a score of 1.0), or None.
        known_defect: when a labelled anomalous example raised the score, which one and by how much.
        hard_normals: when hard normals were among the references, the score without them.
        calibration: how the references calibrated `score` ("leave-one-out", "augmented copies"), or None.
        reference_scores: the references' own raw scores behind that calibration (same units as
            `raw_score`), or empty.
        elapsed_ms: wall time of the call.
        error: set when the call failed; then score is None.
    """

    tool: str
    args: dict = Field(default_factory=dict)
    score: float | None = None
    raw_score: float | None = None
    normal_ratio: float | None = None
    log_odds: float | None = None
    regions: list[Region] = Field(default_factory=list)
    summary: str = ""
    map_path: str | None = None
    image_ids: list[str] = Field(default_factory=list)
    known_defect: KnownDefect | None = None
    hard_normals: HardNormals | None = None
    calibration: str | None = None
    reference_scores: list[float] = Field(default_factory=list)
    elapsed_ms: float = 0.0
    error: str | None = None

    def map_array(self):
        """The HxW float32 anomaly map (the tool's raw units) behind `map_path`, or None (no map, or its
        files are gone: maps in the process's temporary folder are removed at exit)."""
        if not self.map_path:
            return None
        from tools.maps import read_float_map

        return read_float_map(self.map_path)
