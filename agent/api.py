"""The Python API: `AnomalyAgent`.

    from agent import AnomalyAgent
    agent = AnomalyAgent.from_config(backend="none")
    verdict = agent.detect("part.png", category="tile", references="refs/")
    print(verdict.pred_label, verdict.pred_score, verdict.explanation)

Images and references may be paths, encoded bytes, PIL images or numpy uint8 arrays (HxW or HxWx3);
`verdict.maps()` gives each tool's anomaly map as an HxW float32 array.

`detect` never raises for a bad item: it returns a `Verdict` with `status="error"`, the reason, and
`error_kind` ("input", "model", "timeout" or "internal"), so batches record failures and go on.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.config import AgentConfig, load_config
from agent.errors import ModelServerError, UserInputError, input_error_types, one_line
from agent.schemas import Verdict

log = logging.getLogger(__name__)


def error_verdict(image: str | None, category: str | None, exc: BaseException) -> Verdict:
    """The error record for an exception raised while judging one image."""
    if isinstance(exc, input_error_types()):
        return Verdict.failed(image, one_line(exc), category, kind="input")
    if isinstance(exc, ModelServerError):
        return Verdict.failed(image, str(exc), category, kind="model")
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError too
        return Verdict.failed(image, f"timed out: {exc}", category, kind="timeout")
    log.error("internal error while judging %s", image, exc_info=exc)
    return Verdict.failed(image, f"internal error: {type(exc).__name__}: {exc}", category, kind="internal")


def _is_image_object(obj) -> bool:
    """A PIL image or a numpy array (one image given as an object, not a list of them)."""
    import numpy as np
    from PIL import Image

    return isinstance(obj, np.ndarray | Image.Image)


class ChatReply(BaseModel):
    """One chat turn's result: the answer, the session's verdict, and the session id to resume with."""

    session: str
    answer: str
    verdict: Verdict | None = None
    turn: int = 1


class _StreamedRun:
    """What a streamed detection has seen so far: the last state, the reference count, a failure."""

    def __init__(self) -> None:
        self.state: dict | None = None
        self.error: BaseException | None = None
        self.n_refs = 0

    def events(self, mode: str, chunk: Any, runtime) -> list[dict]:
        """The step events of one LangGraph stream item (``stream_mode=["updates", "values"]``)."""
        from agent.events import step_events

        if mode == "values":
            self.state = chunk
            return []
        out: list[dict] = []
        for node, update in chunk.items():
            if isinstance(update, dict) and update.get("reference_ids") is not None:
                self.n_refs = len(update["reference_ids"])
            out += step_events(node, update)
            if node == "retrieve_memory":
                out.append({"type": "survey_started", "tools": runtime.survey_tools(self.n_refs)})
        return out

    def final_error(self) -> BaseException | None:
        if self.error is None and (self.state is None or not self.state.get("verdict")):
            return RuntimeError("the graph ended without a verdict")
        return self.error


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

    def check_backend(self) -> str | None:
        """Check the model server once (before a batch): raises `ModelServerError` when it cannot serve
        (see `agent.preflight`); returns the probe's one-line answer, or None for backends without a server."""
        from agent.preflight import preflight

        return preflight(self.backend, self.config)

    @property
    def backend_note(self) -> str:
        """One line: which backend runs and why (e.g. auto's fallback to tools-only)."""
        return self.backend.reason

    def _input(self, image, category, references, question) -> tuple[dict, str]:
        run_id = uuid.uuid4().hex
        if isinstance(references, str | Path):
            references = str(references)
        elif _is_image_object(references):
            references = [references]
        elif references is not None:  # paths, and images as objects (PIL images, numpy arrays)
            references = [str(r) if isinstance(r, Path) else r for r in references]
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
            verdict.backend, verdict.model_id = self.backend.name, self.backend.model_id
        else:
            verdict = Verdict.model_validate(state["verdict"])
        verdict.timings["total_ms"] = (time.perf_counter() - started) * 1000.0
        if trace_dir is not None and state is not None:
            from agent.trace import write_trace

            write_trace(Path(trace_dir), run_id, state, verdict)
        return verdict

    def detect(self, image: str | Path | bytes | Any, category: str | None = None,
               references: list[str | Path | Any] | str | Path | Any | None = None, question: str | None = None,
               trace_dir: str | Path | None = None) -> Verdict:
        """Judge one image.

        Args:
            image: a path, encoded bytes, a PIL image, or a numpy uint8 array HxW (grey) or HxWx3 (RGB).
            category: class name ("bottle"); used in prompts and for memory retrieval.
            references: normal references: paths, a folder, a glob, "memory", None (zero-shot), or a
                list of paths, PIL images and numpy arrays (as for `image`).
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
        finally:
            self.runtime.end_run(run_id)  # also when cancelled: the run's images and features go
        return self._finish(state, run_id, image, category, started, trace_dir, error)

    async def adetect(self, image: str | Path | bytes | Any, category: str | None = None,
                      references: list[str | Path | Any] | str | Path | Any | None = None, question: str | None = None,
                      trace_dir: str | Path | None = None) -> Verdict:
        """Async `detect` (model calls are awaited; tools run in worker threads)."""
        started = time.perf_counter()
        state_in, run_id = self._input(image, category, references, question)
        state, error = None, None
        try:
            state = await self.graph.ainvoke(state_in, self._config(run_id))
        except Exception as exc:  # noqa: BLE001
            error = exc
        finally:
            self.runtime.end_run(run_id)  # a timeout cancels the task: release its run all the same
        return self._finish(state, run_id, image, category, started, trace_dir, error)

    async def astream_detect(self, image: str | Path | bytes, category: str | None = None,
                             references: list[str | Path] | str | Path | None = None,
                             question: str | None = None,
                             trace_dir: str | Path | None = None) -> AsyncIterator[dict]:
        """`adetect`, yielding the agent's steps as they happen (`agent.events.step_events`), then
        ``{"type": "verdict", "verdict": Verdict}`` last. Failures end in an error verdict as in
        `detect`; cancelling the iteration frees the run's resources."""
        started = time.perf_counter()
        state_in, run_id = self._input(image, category, references, question)
        run = _StreamedRun()
        try:
            async for mode, chunk in self.graph.astream(state_in, self._config(run_id),
                                                        stream_mode=["updates", "values"]):
                for event in run.events(mode, chunk, self.runtime):
                    yield event
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error verdict
            run.error = exc
        except BaseException:
            self.runtime.end_run(run_id)
            raise
        yield {"type": "verdict", "verdict": self._finish(run.state, run_id, image, category, started, trace_dir,
                                                          run.final_error())}

    def stream_detect(self, image: str | Path | bytes, category: str | None = None,
                      references: list[str | Path] | str | Path | None = None, question: str | None = None,
                      trace_dir: str | Path | None = None) -> Iterator[dict]:
        """`astream_detect` in the calling thread (as `detect` runs): the steps, then the verdict last."""
        started = time.perf_counter()
        state_in, run_id = self._input(image, category, references, question)
        run = _StreamedRun()
        try:
            for mode, chunk in self.graph.stream(state_in, self._config(run_id), stream_mode=["updates", "values"]):
                yield from run.events(mode, chunk, self.runtime)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error verdict
            run.error = exc
        except BaseException:
            self.runtime.end_run(run_id)
            raise
        yield {"type": "verdict", "verdict": self._finish(run.state, run_id, image, category, started, trace_dir,
                                                          run.final_error())}

    # chat ----------------------------------------------------------------------------------------
    def _chat_graph(self):
        if getattr(self, "_chat", None) is None:
            import sqlite3

            from langgraph.checkpoint.sqlite import SqliteSaver

            from agent.graph import build_chat_graph

            path = Path(self.config.sessions_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._chat_conn = sqlite3.connect(str(path), check_same_thread=False)
            self._chat = build_chat_graph(self.runtime, SqliteSaver(self._chat_conn))
        return self._chat

    def forget_session(self, session: str) -> None:
        """Drop a chat session: its saved history and the images it holds in memory."""
        self.runtime.end_run(session)
        self._chat_graph().checkpointer.delete_thread(session)

    def session_checkpoint(self, session: str) -> str | None:
        """The id of a chat session's latest checkpoint (None when the session has none)."""
        snapshot = self._chat_graph().get_state({"configurable": {"thread_id": session}})
        return (snapshot.config or {}).get("configurable", {}).get("checkpoint_id")

    def fork_session(self, source: str, checkpoint_id: str, session: str, image: str | Path) -> dict:
        """Start chat session `session` as a copy of `source` at one of its checkpoints (a branch: `source` is
        unchanged), its image at `image`; returns the copied state's values.

        Raises:
            UserInputError: `source` has no such checkpoint.
        """
        import copy

        saver = self._chat_graph().checkpointer
        found = saver.get_tuple({"configurable": {"thread_id": source, "checkpoint_ns": "", "checkpoint_id": checkpoint_id}})
        if found is None:
            msg = f"session {source} has no checkpoint {checkpoint_id}. Fix: start a new conversation"
            raise UserInputError(msg)
        checkpoint = copy.deepcopy(found.checkpoint)
        values = checkpoint.get("channel_values", {})
        if "image" in values:
            values["image"] = str(image)
        saver.put({"configurable": {"thread_id": session, "checkpoint_ns": ""}}, checkpoint, found.metadata, {})
        return values

    def session_state(self, session: str) -> dict:
        """The saved state of a chat session ({} when it does not exist)."""
        snapshot = self._chat_graph().get_state({"configurable": {"thread_id": session}})
        return dict(snapshot.values or {})

    def chat(self, message: str, image: str | Path | None = None, session: str | None = None,
             category: str | None = None, references: list[str | Path] | str | Path | None = None) -> ChatReply:
        """One chat turn about one image.

        A new session (no `session`, or an unknown id) needs `image`: it is judged first, then the
        message is answered. A known session resumes from its saved history (SqliteSaver at
        `config.sessions_path`), reusing the evidence already gathered.

        Raises:
            UserInputError: a new session without an image, or an image that does not match the session.
        """
        reply = None
        for event in self.chat_stream(message, image, session, category, references):
            if event["type"] == "reply":
                reply = event["reply"]
        return reply

    def chat_stream(self, message: str, image: str | Path | None = None, session: str | None = None,
                    category: str | None = None,
                    references: list[str | Path] | str | Path | None = None) -> Iterator[dict]:
        """`chat`, yielding the turn's steps (`agent.events.step_events`) as they happen, then
        ``{"type": "reply", "reply": ChatReply}`` last. Raises as `chat` does.

        Also yielded: ``{"type": "chat_turn", "verdict": dict | None}`` when the turn's answer begins (after any
        detection), then ``answer_token`` events (`agent.events.answer_token`) as the model writes; the reply's
        answer is the last model call's text, so a call that ends in tool calls is not the answer."""
        from agent.events import answer_token, step_events

        listed = references if isinstance(references, list | tuple) else [references]
        if any(r is not None and not isinstance(r, str | Path) for r in listed):
            msg = ("chat takes references as paths, a folder, a glob or 'memory' (the session saves them to resume "
                   "later). Fix: save the images to files and pass their paths")
            raise UserInputError(msg)
        if image is not None and not isinstance(image, str | Path):
            msg = (f"chat takes the image as a path (the session saves it to resume later), got a "
                   f"{type(image).__name__}. Fix: save the image to a file and pass its path")
            raise UserInputError(msg)
        graph = self._chat_graph()
        if session is None and image is None:
            msg = ("chat needs an image to start a session. Fix: pass the image (anomaly-agent chat IMAGE "
                   "--message TEXT), or --session ID to continue a saved session")
            raise UserInputError(msg)
        given = session is not None
        session = session or uuid.uuid4().hex[:12]
        saved = self.session_state(session)
        config = {"recursion_limit": self._recursion_limit, "configurable": {"thread_id": session}}
        if saved.get("verdict"):
            if image is not None and str(image) != saved.get("image"):
                msg = (f"session {session} is about {saved.get('image')}, not {image}. "
                       "Fix: omit the image to continue the session, or start a new one without --session")
                raise UserInputError(msg)
            state_in = {"run_id": session, "question": message}
        else:
            if image is None:  # only a session id the caller gave can be unknown here
                msg = (f"no saved session {session!r} in {self.config.sessions_path}. Fix: check the id (printed "
                       "after every turn), or pass the image to start a new session") if given else \
                    "chat needs an image to start a session. Fix: pass the image"
                raise UserInputError(msg)
            state_in, _ = self._input(image, category, references, message)
            state_in["run_id"] = session
        state: dict = {}
        chatting = False  # the turn's own model calls (after begin_turn) write the answer
        try:
            for mode, chunk in graph.stream(state_in, config, stream_mode=["updates", "values", "messages"]):
                if mode == "values":
                    state = chunk
                elif mode == "messages":
                    if chatting and (event := answer_token(*chunk)) is not None:
                        yield event
                else:
                    for node, update in chunk.items():
                        if node == "begin_turn":
                            chatting = True
                            yield {"type": "chat_turn", "verdict": state.get("verdict")}
                        yield from step_events(node, update)
        finally:
            self.runtime.end_run(session)  # the next turn restores the images from the saved session
        verdict = Verdict.model_validate(state["verdict"]) if state.get("verdict") else None
        turns = sum(1 for m in state.get("messages", []) if getattr(m, "type", "") == "human" and "Question:" in str(m.content))
        yield {"type": "reply", "reply": ChatReply(session=session, answer=state.get("answer") or "",
                                                   verdict=verdict, turn=max(turns, 1))}
