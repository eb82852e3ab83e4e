"""One OpenAI chat turn: pick (or create, or branch) its session, run it in a worker thread, file the result.

`plan` decides where the turn runs (`openai_convo`), creating a new session for a new image or branching one
at a checkpoint; `worker` returns the function the admission queue runs: the turn, its token usage, and the
new history filed under its key, so the client's next request finds it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from agent.server.errors import ApiError
from agent.server.openai_convo import ConversationIndex, history_key, parts
from agent.server.routes_sessions import DEFAULT_QUESTION, new_session, run_turn_locked
from agent.server.state import ServerState
from agent.server.uploads import decode_data_url


@dataclass
class Turn:
    """What one request runs: the session, the question, `first` (a new session's image...) and the key of the
    history its answer extends."""

    session: str
    question: str
    first: dict | None
    prior: list = field(default_factory=list)
    last: object = None
    scope: str = ""
    new_verdict: bool = False


def index(state: ServerState) -> ConversationIndex:
    return ConversationIndex(state.sessions_dir / "openai")


def _newest_image(messages) -> str | None:
    for message in reversed(messages):
        if message.role == "user":
            images = parts(message)[1]
            if images:
                return images[0]
    return None


async def plan(state: ServerState, body, category: str | None, references: str | None) -> Turn:
    """Where this request's turn runs (see `agent.server.openai_convo`)."""
    messages = body.messages
    prior, last = messages[:-1], messages[-1]
    scope = f"{body.model}\0{category}\0{references}"
    text, images = parts(last)
    question = text.strip() or DEFAULT_QUESTION
    image_url = images[0] if images else None
    branch = None
    if image_url is None and any(m.role == "assistant" for m in prior):
        key = history_key(prior, scope)
        branch = await asyncio.to_thread(index(state).resolve, key, body.session, state.agent.session_checkpoint)
    if image_url is None and branch is None:
        image_url = _newest_image(messages)  # a first question, or a history this server did not produce
        if image_url is None:
            raise ApiError(400, "invalid_request_error", "no image in the conversation",
                           "attach the image to a user message as an image_url content part with a data: URL",
                           param="messages", code="missing_image")
    turn = Turn(session="", question=question, first=None, prior=list(prior), last=last, scope=scope)
    if image_url is not None:
        data = decode_data_url(image_url)
        ext = (await state.check_images([(data, "image")]))[0]
        turn.session, path = await new_session(state, data, ext, {"image": "chat image", "category": category,
                                                                  "source": "openai"})
        turn.first = {"image": str(path), "category": category, "references": references}
        turn.new_verdict = True
    elif branch.session is not None:
        turn.session = branch.session
    else:
        turn.session = await _fork(state, branch.source, branch.checkpoint)
    return turn


async def _fork(state: ServerState, source: str, checkpoint: str) -> str:
    """A new session copying `source` at `checkpoint` (its image and saved state)."""
    folder = state.sessions_dir / source
    images = sorted(folder.glob("query.*"))
    if not images or not (folder / "meta.json").is_file():
        raise ApiError(409, "invalid_request_error", "the conversation's session is gone from this server",
                       "start a new conversation (send the image again)", code="session_gone")
    meta = json.loads((folder / "meta.json").read_text())
    session, path = await new_session(state, images[0].read_bytes(), images[0].suffix,
                                      {"image": meta.get("image"), "category": meta.get("category"),
                                       "source": "openai", "branched_from": source})
    from agent.errors import UserInputError

    try:
        await asyncio.to_thread(state.agent.fork_session, source, checkpoint, session, path)
    except UserInputError:
        raise ApiError(409, "invalid_request_error", "the conversation's saved state is gone from this server",
                       "start a new conversation (send the image again)", code="session_gone") from None
    return session


def ok_verdict(verdict):
    """`verdict` (a `Verdict`, its JSON dict, or None) as a `Verdict` when it is an ok one, else None."""
    from agent.schemas import Verdict

    if isinstance(verdict, dict):
        verdict = Verdict.model_validate(verdict)
    return verdict if verdict is not None and verdict.status == "ok" else None


def verdict_heading(verdict) -> str:
    """The line an answer that judged an image starts with ("**ANOMALOUS**: score 0.93 (threshold 0.50)" and a
    blank line); "" for no verdict or an error verdict. `verdict`: a `Verdict` or its JSON dict."""
    verdict = ok_verdict(verdict)
    if verdict is None:
        return ""
    return f"**{verdict.pred_label.upper()}**: score {verdict.pred_score:.2f} (threshold {verdict.threshold:.2f})\n\n"


def content(reply, new_verdict: bool, redactor) -> str:
    """The assistant message's text: a verdict line first when the turn judged an image."""
    return (verdict_heading(reply.verdict) if new_verdict else "") + redactor.text(reply.answer)


def file_history(state: ServerState, turn: Turn, shown: str, checkpoint: str | None) -> None:
    """File the history that ends in the assistant message `shown`, so the client's next request finds the
    session (blocking: run it in a thread)."""
    if checkpoint:
        index(state).add(history_key([*turn.prior, turn.last, {"role": "assistant", "content": shown}], turn.scope),
                         turn.session, checkpoint)


def _tokens(values: dict) -> tuple[int, int]:
    return int(values.get("prompt_tokens") or 0), int(values.get("completion_tokens") or 0)


def worker(state: ServerState, turn: Turn):
    """The function (``fn(emit)``) the admission queue runs in a worker thread; returns
    ``{"reply", "text", "usage"}``."""
    def run(emit=None) -> dict:
        agent = state.agent
        with state.session_lock(turn.session):
            before = (0, 0) if turn.first is not None else _tokens(agent.session_state(turn.session))
            reply = run_turn_locked(state, turn.session, turn.question, turn.first, emit)
            after = _tokens(agent.session_state(turn.session))
            checkpoint = agent.session_checkpoint(turn.session)
        text = content(reply, turn.new_verdict, state.redactor)
        file_history(state, turn, text, checkpoint)
        prompt, completion = after[0] - before[0], after[1] - before[1]
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return {"reply": reply, "text": text, "usage": usage, "checkpoint": checkpoint}

    return run
