"""No server path in a reply: verdicts as a client may see them, and the server's folders in texts rewritten.

`Redactor.text` replaces the server's own folders (data dir, memory, sessions, temp, home) inside any string
with a placeholder such as ``<data>``; `Redactor.json` does it throughout a JSON-like value.
`public_verdict` is a verdict for a reply: the image as its display name, evidence maps as URLs or None.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any


class Redactor:
    """Rewrites the server's folders in strings (longest first, so a folder inside another keeps its name)."""

    def __init__(self, roots: dict[str, Path | str | None]) -> None:
        pairs = []
        for name, root in roots.items():
            if not root:
                continue
            for form in {str(Path(root)), str(Path(root).expanduser().resolve())}:
                if len(form) > 1:
                    pairs.append((form, f"<{name}>"))
        self.pairs = sorted(pairs, key=lambda p: -len(p[0]))

    @classmethod
    def for_server(cls, settings, config) -> Redactor:
        return cls({"data": settings.data_dir, "memory": config.memory_path,
                    "sessions": Path(config.sessions_path).parent, "tmp": tempfile.gettempdir(),
                    "home": Path.home()})

    def text(self, value: str) -> str:
        for root, placeholder in self.pairs:
            if root in value:
                value = value.replace(root, placeholder)
        return value

    def json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.json(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.json(v) for v in value]
        return value


def public_verdict(verdict, name: str | None, redactor: Redactor) -> dict:
    """`verdict` as a reply shows it: ``image`` is the upload's display name, each evidence's ``map_path`` is
    None unless it is already a URL (runs rewrite theirs, see `RunStore.finish`), no server folder anywhere."""
    record = verdict.model_dump(mode="json") if hasattr(verdict, "model_dump") else dict(verdict)
    record["image"] = name
    for item in record.get("evidence") or []:
        if not str(item.get("map_path") or "").startswith("/v1/"):
            item["map_path"] = None
    return redactor.json(record)
