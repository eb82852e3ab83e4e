"""The Python API: `AnomalyAgent`.

    from agent import AnomalyAgent
    agent = AnomalyAgent.from_config(backend="none")
    verdict = agent.detect("part.png", category="tile", references="refs/")
    print(verdict.pred_label, verdict.pred_score, verdict.explanation)

`detect` never raises for a bad item: it returns a `Verdict` with `status="error"`, the reason, and
`error_kind` ("input", "model" or "internal"), so batches record failures and go on.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, ConfigError, load_config
from agent.errors import ModelServerError, UserInputError
from agent.schemas import Verdict
from tools.base import ToolError
from tools.images import ImageInputError

log = logging.getLogger(__name__)
INPUT_ERRORS = (ImageInputError, UserInputError, ConfigError, ToolError, FileNotFoundError)


def error_verdict(image: str | None, category: str | None, exc: BaseException) -> Verdict:
    """The error record for an exception raised while judging one image."""
    if isinstance(exc, INPUT_ERRORS):
        return Verdict.failed(image, str(exc), category, kind="input")
    if isinstance(exc, ModelServerError):
        return Verdict.failed(image, str(exc), category, kind="model")
    log.error("internal error while judging %s", image, exc_info=exc)
    return Verdict.failed(image, f"internal error: {type(exc).__name__}: {exc}", category, kind="internal")


class AnomalyAgent:
    """Detect anomalies in images with tools, memory and (optionally) a multimodal model."""

    def __init__(self, config: AgentConfig | None = None, backend=None) -> None:
        from agent.backends.factory import build_backend
        from agent.graph import build_graph, recursion_limit
        from agent.runtime import AgentRuntime

        self.config = config or load_config()
        self.backend = backend or build_backend(self.config)
        self.runtime = AgentRuntime(self.config, self.backend)
        self.graph = build_graph(self.runtime)
        self._recursion_limit = recursion_limit(self.runtime)

    @classmethod
    def from_config(cls, config: AgentConfig | str | Path | None = None, **overrides: Any) -> AnomalyAgent:
        """Build from an `AgentConfig`, a YAML path, or keyword overrides (`backend="none"`, ...)."""
        if isinstance(config, AgentConfig):
            cfg = config.model_copy(update=overrides) if overrides else config
        else:
            cfg = load_config(config, **overrides)
        return cls(cfg)

    @property
    def backend_note(self) -> str:
        """One line: which backend runs and why (e.g. auto's fallback to tools-only)."""
        return self.backend.reason

    def _input(self, image, category, references, question) -> tuple[dict, str]:
        run_id = uuid.uuid4().hex
        if isinstance(references, str | Path):
            references = str(references)
        elif references is not None:
            references = [str(r) for r in references]
        state = {"run_id": run_id, "image": str(image) if isinstance(image, Path) else image,
                 "category": category, "references": references, "question": question}
        return state, run_id

    def _config(self, run_id: str) -> dict:
        return {"recursion_limit": self._recursion_limit, "configurable": {"thread_id": run_id}}

    def _finish(self, state: dict | None, run_id: str, image, category, started: float,
                trace_dir: str | Path | None, exc: BaseException | None) -> Verdict:
        self.runtime.end_run(run_id)
        name = str(image) if isinstance(image, str | Path) else None
        if exc is not None:
            verdict = error_verdict(name, category, exc)
        else:
            verdict = Verdict.model_validate(state["verdict"])
        verdict.timings["total_ms"] = (time.perf_counter() - started) * 1000.0
        if trace_dir is not None and state is not None:
            from agent.trace import write_trace

            write_trace(Path(trace_dir), run_id, state, verdict)
        return verdict

    def detect(self, image: str | Path | bytes, category: str | None = None,
               references: list[str | Path] | str | Path | None = None, question: str | None = None,
               trace_dir: str | Path | None = None) -> Verdict:
        """Judge one image.

        Args:
            image: path or encoded bytes.
            category: class name ("bottle"); used in prompts and for memory retrieval.
            references: normal references: paths, a folder, a glob, "memory", or None (zero-shot).
            question: optional text for the model.
            trace_dir: save the run's trace JSON (and maps) here.
        """
        started = time.perf_counter()
        state_in, run_id = self._input(image, category, references, question)
        state, error = None, None
        try:
            state = self.graph.invoke(state_in, self._config(run_id))
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error verdict
            error = exc
        return self._finish(state, run_id, image, category, started, trace_dir, error)

    async def adetect(self, image: str | Path | bytes, category: str | None = None,
                      references: list[str | Path] | str | Path | None = None, question: str | None = None,
                      trace_dir: str | Path | None = None) -> Verdict:
        """Async `detect` (model calls are awaited; tools run in worker threads)."""
        started = time.perf_counter()
        state_in, run_id = self._input(image, category, references, question)
        state, error = None, None
        try:
            state = await self.graph.ainvoke(state_in, self._config(run_id))
        except Exception as exc:  # noqa: BLE001
            error = exc
        return self._finish(state, run_id, image, category, started, trace_dir, error)
