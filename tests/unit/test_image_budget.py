"""One image budget per request: the oldest images become a text line, the query always stays."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage

from agent.backends.messages import count_images, fit_image_budget
from agent.conversation import image_slots


def img(name: str) -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{name}"}}


def turn(*parts) -> HumanMessage:
    return HumanMessage([{"type": "text", "text": p} if isinstance(p, str) else p for p in parts])


def test_oldest_images_are_replaced_and_the_query_kept():
    messages = [
        turn("Plan.", img("query"), "Normal reference ref0:", img("ref0"), "Normal reference ref1:", img("ref1")),
        AIMessage("zooming"),
        turn("Image(s) produced by zoom: zoom0.", "zoom0:", img("zoom0")),
        turn("Image(s) produced by zoom: zoom1.", "zoom1:", img("zoom1")),
    ]
    fitted, dropped = fit_image_budget(messages, 3, keep_urls={"data:image/png;base64,query"})
    assert count_images(fitted) == 3
    assert dropped == ["Normal reference ref0", "Normal reference ref1"]
    assert fitted[0].content[1] == img("query")
    assert "[Normal reference ref0: image shown earlier, not sent again (at most 3 images per request)]" in str(fitted[0].content)
    assert fitted[1] is messages[1] and fitted[3] is messages[3]  # untouched messages are the same objects
    assert count_images(messages) == 5  # the input is not modified


def test_within_budget_nothing_changes():
    messages = [turn("Plan.", img("query"), img("ref0"))]
    fitted, dropped = fit_image_budget(messages, 4)
    assert dropped == [] and fitted[0] is messages[0]


def test_first_request_slots_keep_room_for_a_labelled_anomaly():
    assert image_slots(4, n_references=3, n_anomalies=5, n_normals=0) == (2, 1, 0)
    assert image_slots(4, n_references=3, n_anomalies=0, n_normals=0) == (3, 0, 0)
    assert image_slots(4, n_references=0, n_anomalies=1, n_normals=8) == (0, 1, 2)
    assert image_slots(2, n_references=3, n_anomalies=2, n_normals=0) == (1, 0, 0)
    assert image_slots(1, n_references=3, n_anomalies=2, n_normals=0) == (0, 0, 0)
