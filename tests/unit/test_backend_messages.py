"""Message preprocessing: one system message, bounded image sizes, cached image blocks."""

from __future__ import annotations

import numpy as np
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from agent.backends.messages import (
    count_images,
    data_url_size,
    human_message,
    limit_image_sizes,
    merge_system_messages,
    stored_image_block,
)
from tools.images import ImageStore


def _pixels(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_merges_all_system_messages_first_in_order():
    msgs = [HumanMessage("q"), SystemMessage("one"), AIMessage("a"), SystemMessage("two")]
    merged = merge_system_messages(msgs)
    assert [m.type for m in merged] == ["system", "human", "ai"]
    assert merged[0].content == "one\n\ntwo"


def test_merges_block_content():
    merged = merge_system_messages([SystemMessage("a"), SystemMessage([{"type": "text", "text": "b"}])])
    assert merged[0].content == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]


def test_single_leading_system_message_is_untouched():
    msgs = [SystemMessage("s"), HumanMessage("q")]
    assert merge_system_messages(msgs) == msgs


def test_limit_image_sizes_downscales_only_large_images():
    big = human_message("x", [_pixels(200, 100)], fmt="JPEG")
    small = human_message("y", [_pixels(40, 60)])
    out = limit_image_sizes([big, small], max_side=64)
    assert data_url_size(out[0].content[1]["image_url"]["url"]) == (32, 64)
    assert out[0].content[1]["image_url"]["url"].startswith("data:image/jpeg")
    assert out[1] is small
    assert count_images(out) == 2


def test_stored_image_block_is_cached_by_digest():
    store = ImageStore()
    image_id = store.add_array(_pixels(80, 120), source="test")
    first = stored_image_block(store.get(image_id), 64, "PNG")
    assert stored_image_block(store.get(image_id), 64, "PNG") is first
    assert stored_image_block(store.get(image_id), 64, "JPEG") is not first
    assert data_url_size(first["image_url"]["url"]) == (64, 43)
