"""Conversation keys and the index that picks (or branches) a session (agent/server/openai_convo.py)."""

from __future__ import annotations

import pytest

from agent.server.openai_convo import ConversationIndex, history_key


def _user(text, image=None):
    content = [{"type": "text", "text": text}]
    if image:
        content.append({"type": "image_url", "image_url": {"url": image}})
    return {"role": "user", "content": content}


def test_history_key_covers_roles_texts_images_and_scope():
    base = [_user("is it ok?", "data:image/png;base64,AAAA"), {"role": "assistant", "content": "yes"}]
    key = history_key(base, "m")
    assert key == history_key([_user(" is it ok? ", "data:image/png;base64,AAAA"), base[1]], "m")  # spaces
    assert key != history_key([_user("is it ok?", "data:image/png;base64,BBBB"), base[1]], "m")  # the image
    assert key != history_key([base[0], {"role": "user", "content": "yes"}], "m")  # the role
    assert key != history_key([base[0], {"role": "assistant", "content": "no"}], "m")  # the text
    assert key != history_key(base, "m/other")  # model, category, references
    assert key != history_key([{"role": "system", "content": "be brief"}, *base], "m")  # every message counts
    folded = {"role": "assistant", "content": "<think>steps</think>yes"}
    assert history_key([base[0], folded], "m") == key  # reasoning folded back by a chat app is not history


def test_index_appends_only_when_unambiguous_and_at_the_tip(tmp_path):
    index = ConversationIndex(tmp_path)
    tips = {"aaaaaaaaaaaa": "c2", "bbbbbbbbbbbb": "c1"}
    key = "0" * 32
    assert index.resolve(key, None, tips.get) is None
    index.add(key, "aaaaaaaaaaaa", "c2")
    assert index.resolve(key, None, tips.get).session == "aaaaaaaaaaaa"  # the one conversation, at its tip
    tips["aaaaaaaaaaaa"] = "c3"  # it moved on: a regenerated or edited turn branches from c2
    branch = index.resolve(key, None, tips.get)
    assert branch.session is None and (branch.source, branch.checkpoint) == ("aaaaaaaaaaaa", "c2")
    tips["aaaaaaaaaaaa"] = "c2"
    index.add(key, "bbbbbbbbbbbb", "c1")  # another conversation with the same history
    assert index.resolve(key, None, tips.get).session is None  # ambiguous: branch, never share
    assert index.resolve(key, "bbbbbbbbbbbb", tips.get).session == "bbbbbbbbbbbb"  # unless the client says which
    assert index.resolve(key, "cccccccccccc", tips.get).session is None
    with pytest.raises(ValueError):
        index.entries("../" + "0" * 29)
