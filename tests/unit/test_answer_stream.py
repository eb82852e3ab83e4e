"""The OpenAI endpoint's streamed answer: words as the model writes them, redacted whole, ending as the reply."""

from __future__ import annotations

from agent.server.answer_stream import AnswerStream
from agent.server.redact import Redactor


def _feed(stream: AnswerStream, pieces: list[str], call: str = "c1", tool_call: bool = False) -> list[str]:
    sent = [stream.add({"type": "answer_token", "text": p, "call": call, "tool_call": tool_call}) for p in pieces]
    return [s for s in sent if s]


def test_words_go_out_whole_and_a_server_path_is_never_sent_half_redacted():
    stream = AnswerStream(Redactor({"data": "/srv/anomaly/data"}), prefix="**NORMAL**: score 0.10\n\n")
    final = "The map at /srv/anomaly/data/maps/q.png shows nothing."
    sent = _feed(stream, ["The m", "ap at /srv/ano", "maly/da", "ta/maps/q.png sh", "ows nothing."])
    assert "".join(sent) == "The map at <data>/maps/q.png shows"  # the last word waits for the next space
    assert all("/srv" not in s for s in sent)
    rest = stream.finish(Redactor({"data": "/srv/anomaly/data"}).text(final))
    assert rest == " nothing." and stream.shown == "**NORMAL**: score 0.10\n\n" + "The map at <data>/maps/q.png shows nothing."


def test_a_tool_call_turn_sends_nothing_more_and_the_answer_follows_whole():
    stream = AnswerStream(Redactor({}))
    assert _feed(stream, ["Let me zoom ", "in first. "]) == ["Let me zoom", " in first."]
    assert _feed(stream, ["", "more words "], tool_call=True) == []  # the call turned into a tool call
    assert _feed(stream, ["The scratch ", "is real."], call="c2") == []  # another text: held until the end
    final = "The scratch is real."
    assert stream.finish(final) == "\n\n" + final
    assert stream.shown == "Let me zoom in first.\n\n" + final


def test_no_model_tokens_the_whole_offline_answer_at_the_end():
    stream = AnswerStream(Redactor({}))
    assert stream.finish("It is anomalous: the top-left region.") == "It is anomalous: the top-left region."
