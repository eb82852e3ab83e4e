"""What the graph's nodes share: the agent-wide runtime and each run's resources.

`AgentRuntime` is built once per `AnomalyAgent`: config, backend (chat model), tool instances, the
memory store (lazily), the prompt set, and a feature cache shared by all runs (`tools.cache.ByteLRU`,
bounded by `feature_cache_mb`; keys are content digests, so references are embedded once per process,
not once per query). `RunResources` holds one query's `ImageStore` and `ToolContext`; what the tools
cache about the query itself lives there and is released when the run ends (`end_run`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field

from agent.backends.factory import Backend
from agent.config import AgentConfig
from agent.errors import UserInputError
from prompts import PromptSet, load_prompts
from tools.base import Tool, ToolContext, ToolError
from tools.cache import ByteLRU
from tools.images import ImageStore
from tools.registry import create_tool, tool_names
from tools.types import Evidence

REFERENCE_TOOLS = ("patch_knn", "reference_diff", "parts_check")
SURVEY_ONLY_TOOLS = ("patch_knn_fine",)  # part of the survey's reading, not offered to the model


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


@dataclass
class RunResources:
    """One query's images and tool context.

    Attributes:
        images: the run's `ImageStore` ("query", "ref0", ... and derived crops).
        ctx: the `ToolContext` the tools see.
        started: `time.monotonic()` at intake; the wall-time budget counts from here.
        notes: sentences the verdict's explanation must carry (e.g. references left out by the cap).
    """

    images: ImageStore
    ctx: ToolContext
    started: float = field(default_factory=time.monotonic)
    notes: list[str] = field(default_factory=list)


class AgentRuntime:
    """Agent-wide resources shared by all runs of one `AnomalyAgent`."""

    def __init__(self, config: AgentConfig, backend: Backend, prompts: PromptSet | None = None) -> None:
        self.config = config
        self.backend = backend
        self.prompts = prompts or load_prompts("agent")
        self.feature_cache = ByteLRU(int(config.feature_cache_mb * 2**20))
        self.runs: dict[str, RunResources] = {}
        self._tools: dict[str, Tool] = {}
        self._selections: dict = {}  # reference cap decisions, see select_references
        self._tool_lock = threading.Lock()
        self._memory = None
        self._memory_lock = threading.Lock()
        self._memory_checked = False
        self._embedder = None
        self._clip_ok: bool | None = None
        if config.threads:
            import torch

            torch.set_num_threads(config.threads)

    # tools -----------------------------------------------------------------------------------
    def tool(self, name: str) -> Tool:
        """The shared instance of a tool, set up once (thread-safe)."""
        with self._tool_lock:
            if name not in self._tools:
                self._tools[name] = create_tool(name)
            return self._tools[name]

    def clip_available(self) -> bool:
        """Do the configured CLIP weights resolve locally (checked once)?"""
        if self._clip_ok is None:
            try:
                from tools.clip_models import clip_weights_status

                self._clip_ok = bool(clip_weights_status(self.config.tool_settings())[0])
            except ImportError:
                self._clip_ok = False
        return self._clip_ok

    def available_tools(self, n_references: int) -> list[str]:
        """Tools the model may call in a run with `n_references` normal references."""
        names = []
        for name in tool_names():
            if name in SURVEY_ONLY_TOOLS:
                continue
            if name in REFERENCE_TOOLS and n_references == 0:
                continue
            if name == "clip_similarity" and not self.clip_available():
                continue
            names.append(name)
        return names

    def survey_tools(self, n_references: int) -> list[str]:
        """The cheap tools run before the model speaks: with references patch kNN first (and its second scale,
        `survey_fine_scale`), then the complementary tools the survey fusion counts
        (`agent.survey_fusion.SURVEY_WEIGHTS`); CLIP without."""
        if n_references > 0:
            from agent.survey_fusion import FINE_TOOL, MIN_REFERENCES_FOR_OTHERS

            scales = ["patch_knn", *([FINE_TOOL] if self.config.survey_fine_scale else [])]
            if n_references < MIN_REFERENCES_FOR_OTHERS:
                return scales
            return [*scales, *(name for name, w in self.survey_weights().items() if w > 0)]
        return ["clip_similarity"] if self.clip_available() else []

    def survey_weights(self) -> dict[str, float]:
        """The survey's other tools and weights: the configured ones, else `agent.survey_fusion.SURVEY_WEIGHTS`."""
        from agent.survey_fusion import SURVEY_WEIGHTS

        weights = self.config.survey_weights
        return dict(SURVEY_WEIGHTS if weights is None else weights)

    def run_tool(self, name: str, args: dict, res: RunResources) -> Evidence:
        """Run one tool in a run's context and record it as `Evidence`. Raises `ToolError`."""
        tool = self.tool(name)
        with self._tool_lock:  # setup() loads weights once; serialise it
            tool.setup(res.ctx)
        output, elapsed_ms = tool.timed_run(args, res.ctx)
        shared = set(Evidence.model_fields) & set(type(output).model_fields)
        return Evidence(tool=name, args=args, elapsed_ms=elapsed_ms, **{k: getattr(output, k) for k in shared})

    def select_references(self, paths: list) -> tuple[list, str | None]:
        """At most `max_references` of `paths` (the most diverse: `tools.reference_select`) and the note
        saying so (None within the cap). Decided once per set of files (paths, sizes, mtimes) per process;
        the note goes to stderr that first time."""
        cap = self.config.max_references
        if len(paths) <= cap:
            return list(paths), None
        from tools.images import load_any
        from tools.reference_select import select_references

        files = all(isinstance(p, str) for p in paths)  # images given as objects are not remembered
        key = (cap, tuple((p, *_stat(p)) for p in paths)) if files else None
        with self._tool_lock:
            hit = self._selections.get(key) if files else None
        if hit is None:
            hit = select_references(paths, cap, lambda p: load_any(p, self.config.max_image_pixels,
                                                                   self.config.min_image_side)[0])
            print(hit[1], file=sys.stderr)  # once per process and set, like the progress lines
            with self._tool_lock:
                if files:
                    self._selections[key] = hit
                while len(self._selections) > 16:
                    self._selections.pop(next(iter(self._selections)))
        return list(hit[0]), hit[1]

    def new_run(self, run_id: str) -> RunResources:
        images = ImageStore(max_pixels=self.config.max_image_pixels, min_side=self.config.min_image_side)
        ctx = ToolContext(images, settings=self.config.tool_settings(), shared_cache=self.feature_cache)
        res = RunResources(images=images, ctx=ctx)
        self.runs[run_id] = res
        return res

    def resources(self, run_id: str) -> RunResources:
        try:
            return self.runs[run_id]
        except KeyError:
            msg = f"run {run_id!r} has no resources (intake did not run in this process)"
            raise RuntimeError(msg) from None

    def end_run(self, run_id: str) -> None:
        """Forget a run: its images and the query's cached features are released."""
        res = self.runs.pop(run_id, None)
        if res is not None:
            res.ctx.cache.release()

    # memory ----------------------------------------------------------------------------------
    def memory(self):
        """The example store, or None when no store exists at the configured location."""
        with self._memory_lock:
            if not self._memory_checked:
                self._memory_checked = True
                cfg = self.config
                if cfg.memory_host or cfg.memory_path.exists():
                    from memory.store import open_store

                    self._memory = open_store(cfg)
            return self._memory

    def operating_points(self):
        """The per-category thresholds refit from labelled verdicts (`memory.operating_point`), beside the memory."""
        from memory.operating_point import OperatingPoints, operating_points_path

        cfg = self.config
        return OperatingPoints(operating_points_path(cfg.memory_path, cfg.memory_host, cfg.memory_port))

    def active_threshold(self, category: str | None) -> tuple[float, str]:
        """(threshold, where it comes from): a configured `threshold` (flag, file, environment) wins; else the
        category's operating point refit from labelled verdicts, when it has any; else the default 0.5."""
        cfg = self.config
        if "threshold" in cfg.model_fields_set or not category:
            return cfg.threshold, "configured" if "threshold" in cfg.model_fields_set else "default"
        try:
            point = self.operating_points().get(category)
        except ValueError as exc:
            print(f"warning: {exc}; using the default threshold", file=sys.stderr)
            return cfg.threshold, "default"
        if not point.refit:
            return cfg.threshold, "default"
        return point.threshold, (f"refit for '{category}' from {point.n_normal} normal and {point.n_anomalous} "
                                 f"anomalous labelled verdict(s)")

    def embedder(self):
        with self._memory_lock:
            if self._embedder is None:
                from memory.embed import default_embedder

                self._embedder = default_embedder(self.config.tool_settings())
            return self._embedder


def require_references_or_model(runtime: AgentRuntime, n_references: int, memory_normals: int = 0,
                                category: str | None = None) -> None:
    """Zero-shot with neither CLIP weights nor a model cannot judge anything: say what to do.

    `memory_normals`: normal examples of the category that memory retrieved for this run (not used as
    references because --refs memory was not given); the fix then offers exactly that.
    """
    if n_references == 0 and runtime.backend.model is None and not runtime.clip_available():
        if memory_normals:
            msg = (
                f"nothing can judge this image: no references, no CLIP weights and no model, but memory holds "
                f"{memory_normals} normal example(s) of {category!r}. Fix: pass --refs memory to use them as "
                "references (or --refs DIR with normal images)"
            )
        else:
            msg = (
                "nothing can judge this image: no references, no CLIP weights and no model. Fix: pass "
                "--refs DIR with normal images (or `memory add` normals and pass --refs memory), set "
                "ANOMALY_AGENT_CLIP_PRETRAINED to a local CLIP checkpoint, or configure a model "
                "(--base-url / --backend)"
            )
        raise UserInputError(msg)


def looks_grey(pixels) -> bool:
    """Do the RGB pixels carry no colour (all channels equal, up to JPEG-like noise of < 1 level on average;
    judged on about a megapixel of them)?"""
    import numpy as np

    step = max(1, int(np.sqrt(pixels.shape[0] * pixels.shape[1] / 1_000_000)))  # about 1 MP is plenty
    px = pixels[::step, ::step].astype(np.int16)
    return float(np.abs(px[..., 0] - px[..., 1]).mean() + np.abs(px[..., 1] - px[..., 2]).mean()) < 1.0


def mode_note(images: ImageStore, query_id: str, reference_ids: list[str]) -> str | None:
    """A sentence when the query is grey and the references colour (or the reverse), else None.

    Grey files are converted to RGB by replicating the grey level, so the tools compare them with
    colour references, but colour alone then differs between query and references; the verdict
    should say so. Grey means no colour in the pixels (a grey file, or an RGB file with equal channels).
    """
    query = images.get(query_id)
    refs = [images.get(r) for r in reference_ids]
    if not refs:
        return None
    q_grey = looks_grey(query.pixels)
    other = [r for r in refs if looks_grey(r.pixels) != q_grey]
    if not other:
        return None
    kinds = ("greyscale", "colour") if q_grey else ("colour", "greyscale")
    modes = sorted({r.mode for r in other if r.mode})
    q_mode = f" (mode {query.mode})" if query.mode else ""
    r_mode = f" (mode {', '.join(modes)})" if modes else ""
    return (
        f"Note: the query is {kinds[0]}{q_mode} but {len(other)} of {len(refs)} reference(s) are {kinds[1]}"
        f"{r_mode}; the modes differ, so the colour difference alone can raise the score. Fix: compare images "
        "of the same mode (convert the query or the references)."
    )


__all__ = ["AgentRuntime", "RunResources", "ToolError", "mode_note", "require_references_or_model"]
