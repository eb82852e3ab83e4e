"""The tool contract: every anomaly-centric tool is a `Tool` subclass.

A tool has a `name`, a `description` (what the model reads), pydantic `Input` and `Output` models
(the JSON schema the model sees is generated from `Input`), a lazy `setup()` that loads weights, and
`run(args, ctx)`. A `ToolError` is a mistake the caller (the model) can fix, such as an unknown image
id or a box outside the image; anything else is a bug.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from tools.images import ImageStore, UnknownImageIdError
from tools.types import Region

MAPS_KEPT = 256  # temporary map folders kept per process (see ToolContext.out_dir)


class ToolError(Exception):
    """A tool call the caller can fix (bad id, bad box, missing references). Sent back to the model."""


class ToolSettings(BaseModel):
    """What tools need from the configuration (the agent builds it from `AgentConfig`).

    Attributes:
        device: "cpu", "cuda" or "auto".
        threads: torch intra-op threads (None: leave torch's default).
        weights_dir: folder searched first for weight files.
        allow_downloads: let torchvision/open_clip/HF fetch missing weights (off by default).
        backbone: patch-feature backbone name (see `tools.backbones`).
        patch_position: patch_knn compares each patch with reference patches at the same place too.
        clip_model / clip_pretrained: open_clip architecture and pretrained tag or checkpoint path.
        sam_checkpoint / sam_model_type: segment-anything checkpoint file and registry key.
        dinov2_weights: DINOv2 ViT weight file for the ``dinov2_vit`` backbone (torch-hub .pth or timm
            .safetensors); None: ``dinov2_vits14_pretrain.pth`` in weights_dir or the torch hub cache.
        out_dir: where tools write maps and masks (None: a temporary folder).
        bank_dir: where patch_knn stores reference banks between processes (None: not stored).
    """

    model_config = ConfigDict(extra="forbid")

    device: str = "auto"
    threads: int | None = None
    weights_dir: Path | None = None
    allow_downloads: bool = False
    backbone: str = "efficientnet_lite0"
    patch_position: bool = True
    clip_model: str = "ViT-B-16-plus-240"
    clip_pretrained: str = "laion400m_e32"
    sam_checkpoint: Path | None = None
    sam_model_type: str = "vit_b"
    dinov2_weights: Path | None = None
    out_dir: Path | None = None
    bank_dir: Path | None = None


class ToolContext:
    """Per-session state shared by tool calls.

    Holds the `ImageStore`, the query id, the reference ids, the settings, and `cache`, a
    `tools.cache.RunCache`: entries keyed by a reference's pixel digest (reference features, banks,
    calibrations) go to `shared_cache` (an agent-wide `ByteLRU`, bounded in bytes; a private one when
    None), so references are embedded once per process; the rest (the query's features) lives as long
    as this context.
    """

    def __init__(
        self,
        images: ImageStore,
        query_id: str | None = None,
        reference_ids: list[str] | None = None,
        settings: ToolSettings | None = None,
        category: str | None = None,
        shared_cache=None,
    ) -> None:
        from tools.cache import ByteLRU, RunCache

        self.images = images
        self.query_id = query_id
        self.reference_ids = list(reference_ids or [])
        # labelled anomalous examples (image id, name to cite) the tools may compare with (`tools.defect_bank`)
        self.known_defects: list[tuple[str, str]] = []
        # references that widen the banks but are not held out to calibrate the edge of normal: hard normals
        # (false alarms the inspector marked normal), whose unusualness would otherwise move the edge
        self.bank_only_ids: set[str] = set()
        self.settings = settings or ToolSettings()
        self.category = category
        self.cache: RunCache = RunCache(ByteLRU() if shared_cache is None else shared_cache, self._reference_digests)
        self._out_dir: Path | None = None

    def _reference_digests(self) -> set[str]:
        ids = [*self.reference_ids, *(i for i, _ in self.known_defects)]
        return {self.images.get(i).digest for i in ids if i in self.images}

    def require_image(self, image_id: str | None) -> str:
        """Resolve an image id (None = the query) or raise a `ToolError` listing the known ids."""
        image_id = image_id or self.query_id
        if image_id is None:
            msg = "no image id given and the session has no query image"
            raise ToolError(msg)
        try:
            self.images.get(image_id)
        except UnknownImageIdError as exc:
            raise ToolError(str(exc)) from None
        return image_id

    def require_references(self, tool: str, minimum: int = 1) -> list[str]:
        if len(self.reference_ids) < minimum:
            msg = (
                f"{tool} needs at least {minimum} normal reference image(s) and the session has "
                f"{len(self.reference_ids)}; pass --refs DIR or add normals to memory"
            )
            raise ToolError(msg)
        return self.reference_ids

    @property
    def out_dir(self) -> Path:
        """Folder for maps, masks and crops written by tools (`settings.out_dir`, else a folder inside the
        process's temporary folder, removed at exit: `tools.tempdirs`; the last `MAPS_KEPT` contexts'
        folders stay, older ones are removed so a long-running process does not fill the disk)."""
        if self._out_dir is None:
            if self.settings.out_dir is not None:
                self._out_dir = Path(self.settings.out_dir)
            else:
                from tools.tempdirs import temp_dir

                self._out_dir = temp_dir("maps-", keep=MAPS_KEPT)
            self._out_dir.mkdir(parents=True, exist_ok=True)
        return self._out_dir


class ToolInput(BaseModel):
    """Base of every tool's `Input`: unknown fields are an error the model can see and fix."""

    model_config = ConfigDict(extra="forbid")


class ToolOutput(BaseModel):
    """Base of every tool's `Output`.

    Attributes:
        score: calibrated anomaly score in [0, 1] or None (tools that do not score).
        raw_score: uncalibrated score in the tool's own units, or None.
        regions: top regions in the *original* query image's pixels.
        summary: one paragraph, readable by a person and by the model; cites the numbers.
        map_path: anomaly map PNG (HxW, original resolution), if the tool makes one.
        image_ids: images this call registered (crops, aligned references).
        normal_ratio: raw score / the references' typical own score (median of their leave-one-out or
            augmented-copy scores): 1 = as different as the normal references are from each other;
            None where the tool has no such scale.
        log_odds: the calibrated score's log-odds, unbounded (`Calibrator.log_odds`): it keeps the order of
            scores that round to 1.0; None for tools without a calibrator.
    """

    score: float | None = None
    raw_score: float | None = None
    normal_ratio: float | None = None
    log_odds: float | None = None
    regions: list[Region] = Field(default_factory=list)
    summary: str
    map_path: str | None = None
    image_ids: list[str] = Field(default_factory=list)
    _map: Any = PrivateAttr(default=None)

    def with_map(self, amap) -> ToolOutput:
        """Attach this call's HxW float32 map (raw units) as an array; returns self."""
        self._map = amap
        return self

    @property
    def map_array(self):
        """This call's HxW float32 anomaly map (the tool's raw units), or None: the array attached by the
        tool, else the raw ``.npy`` written beside `map_path`."""
        if self._map is None and self.map_path:
            from tools.maps import read_float_map

            self._map = read_float_map(self.map_path)
        return self._map


class Tool:
    """Base class. Subclasses set `name`, `description`, `Input`, `Output` and implement `_run`."""

    name: ClassVar[str]
    description: ClassVar[str]
    Input: ClassVar[type[ToolInput]] = ToolInput
    Output: ClassVar[type[ToolOutput]] = ToolOutput

    def __init__(self) -> None:
        self._ready = False

    def setup(self, ctx: ToolContext) -> None:
        """Load weights (lazily, once). Subclasses that load nothing need not override `_setup`."""
        if not self._ready:
            self._setup(ctx)
            self._ready = True

    def _setup(self, ctx: ToolContext) -> None:  # noqa: B027 - optional hook
        pass

    def run(self, args: ToolInput | dict, ctx: ToolContext) -> ToolOutput:
        """Validate `args`, set up if needed, and run. Raises `ToolError` for fixable mistakes."""
        if isinstance(args, dict):
            from pydantic import ValidationError

            try:
                args = self.Input.model_validate(args)
            except ValidationError as exc:
                raise ToolError(f"invalid arguments for {self.name}: {exc}") from None
        self.setup(ctx)
        return self._run(args, ctx)

    def _run(self, args: Any, ctx: ToolContext) -> ToolOutput:
        raise NotImplementedError

    def timed_run(self, args: ToolInput | dict, ctx: ToolContext) -> tuple[ToolOutput, float]:
        """`run` plus elapsed wall time in milliseconds."""
        start = time.perf_counter()
        out = self.run(args, ctx)
        return out, (time.perf_counter() - start) * 1000.0

    @classmethod
    def input_schema(cls) -> dict:
        """The JSON schema the model sees, generated from `Input`."""
        return cls.Input.model_json_schema()
