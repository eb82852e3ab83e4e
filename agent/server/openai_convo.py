"""Which chat session an OpenAI chat request continues.

OpenAI clients resend the whole conversation each time. A conversation's state is identified by the full
message list (every role, each message's text and a hash of each image) plus the model, category and references:
after each turn the server files ``key(history + [question, answer])`` -> (session, checkpoint). A request whose
prior messages (all but the last) have such a key continues from that checkpoint:

- in that session when it is the only one filed under the key and the session has not moved on since;
- in a new session branched from that checkpoint otherwise: a regenerated or edited turn (the session has
  moved on), or two conversations whose histories are identical so far (two users sending the same first
  message), unless the request echoes the ``session`` id a reply carried, which picks one.

A first message (or one with a new image) starts a new session; so does a history the server never produced.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY = re.compile(r"[0-9a-f]{32}")
_WRITING = threading.Lock()
REASONING = re.compile(r"<think>.*?</think>|<details\b[^>]*type=\"reasoning\"[^>]*>.*?</details>", re.DOTALL)


def parts(message: Any) -> tuple[str, list[str]]:
    """(text, image URLs) of a message (a pydantic message or a dict with role/content)."""
    content = message.content if hasattr(message, "content") else message.get("content")
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind == "image_url":
            value = part.get("image_url")
            url = value.get("url") if isinstance(value, dict) else value
            images.append(str(url or ""))
    return "\n".join(texts), images


def history_key(messages: list, scope: str) -> str:
    """The key of a conversation state: `scope` (model, category, references) and every message's role, text
    and image hashes, in order. Reasoning a chat app folds back into an assistant message (``<think>`` or
    ``<details type="reasoning">`` blocks) is not part of it."""
    digest = hashlib.sha256(scope.encode())
    for message in messages:
        role = message.role if hasattr(message, "role") else message.get("role")
        text, images = parts(message)
        if role == "assistant":
            text = REASONING.sub("", text)
        item = {"role": role, "text": text.strip(), "images": [hashlib.sha256(u.encode()).hexdigest() for u in images]}
        digest.update(hashlib.sha256(json.dumps(item, sort_keys=True).encode()).digest())
    return digest.hexdigest()[:32]


@dataclass
class Branch:
    """Where a turn runs: `session` (None: a new one), branched from (`source`, `checkpoint`) when set."""

    session: str | None = None
    source: str | None = None
    checkpoint: str | None = None


class ConversationIndex:
    """``<folder>/<key>.json``: the (session, checkpoint) pairs filed under each conversation key."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not KEY.fullmatch(key):
            raise ValueError(f"not a conversation key: {key!r}")
        return self.folder / f"{key}.json"

    def entries(self, key: str) -> list[tuple[str, str]]:
        path = self._path(key)
        try:
            return [tuple(e) for e in json.loads(path.read_text())] if path.is_file() else []
        except (OSError, ValueError):
            return []

    def add(self, key: str, session: str, checkpoint: str) -> None:
        with _WRITING:
            entries = [e for e in self.entries(key) if e[0] != session] + [(session, checkpoint)]
            self._path(key).write_text(json.dumps(entries[-8:]))

    def resolve(self, key: str, echoed: str | None, tip) -> Branch | None:
        """Where a request whose prior messages have `key` continues; None when no session has that history.
        `tip(session)` is a session's latest checkpoint id."""
        entries = self.entries(key)
        if not entries:
            return None
        chosen = [e for e in entries if e[0] == echoed] if echoed else []
        session, checkpoint = (chosen or entries)[-1]
        if (chosen or len(entries) == 1) and tip(session) == checkpoint:
            return Branch(session=session)
        return Branch(source=session, checkpoint=checkpoint)


def prune(folder: Path, sessions: Path) -> None:
    """Drop index entries whose session folder is gone (and files left empty)."""
    for path in Path(folder).glob("*.json") if Path(folder).is_dir() else []:
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        kept = [e for e in entries if (sessions / str(e[0])).is_dir()]
        if not kept:
            path.unlink(missing_ok=True)
        elif len(kept) != len(entries):
            path.write_text(json.dumps(kept))
