"""A chat answer streamed as the model writes it, that still ends as exactly the reply's text.

The model's pieces arrive through `agent.events.answer_token`; what the client is sent is redacted (server
paths) and cut at word boundaries (a path or a word is never sent half-way, so redaction sees it whole). A
call that turns out to be a tool call sends nothing more; its words already sent stay, and `finish` then
sends the whole answer after them (rare: the model wrote prose before calling a tool).
"""

from __future__ import annotations

import re

_LAST_WORD = re.compile(r"\s*\S*$")


class AnswerStream:
    """Incremental, redacted answer text.

    Args:
        redactor: the server's `Redactor` (``.text(str) -> str``).
        prefix: text sent before the answer (the verdict line of a turn that judged an image).
    """

    def __init__(self, redactor, prefix: str = "") -> None:
        self.redactor = redactor
        self.prefix = prefix
        self.sent = ""  # the answer's text sent so far (after the prefix)
        self._call = None
        self._raw = ""
        self._calling = False

    def add(self, event: dict) -> str:
        """The new text to send for one ``answer_token`` event ("" when nothing is ready yet)."""
        if event["call"] != self._call:
            self._call, self._raw, self._calling = event["call"], "", False
        self._calling = self._calling or event["tool_call"]
        if self._calling:
            return ""
        self._raw += event["text"]
        visible = self.redactor.text(self._raw.lstrip())
        ready = visible[: _LAST_WORD.search(visible).start()]  # up to the last whole word
        if len(ready) > len(self.sent) and ready.startswith(self.sent):
            piece, self.sent = ready[len(self.sent):], ready
            return piece
        return ""

    def finish(self, final: str) -> str:
        """What is left to send so that the client holds `final` (the reply's text after the prefix); when the
        sent words are not its start (prose before a tool call), the whole answer after a blank line."""
        if final.startswith(self.sent):
            rest = final[len(self.sent):]
        else:
            rest = "\n\n" + final
        self.sent += rest
        return rest

    @property
    def shown(self) -> str:
        """The whole message content the client holds (prefix and answer)."""
        return self.prefix + self.sent
