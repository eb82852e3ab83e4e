"""Small parts of `anomaly-agent serve`: the admission queue, upload names, data URLs, re-labelling."""

from __future__ import annotations

import asyncio
import base64

import pytest

from agent.schemas import Verdict
from agent.server.admission import Admission
from agent.server.errors import ApiError, split_fix
from agent.server.routes_detect import relabel
from agent.server.sse import chunks
from agent.server.uploads import decode_data_url, safe_name


def test_admission_refuses_beyond_workers_plus_queue_and_times_out():
    async def scenario():
        gate = Admission(workers=1, queue=1, timeout_s=0.2)
        await gate.acquire()  # running
        waiter = asyncio.ensure_future(gate.acquire())  # queued
        await asyncio.sleep(0)
        with pytest.raises(ApiError) as busy:
            await gate.acquire()
        assert busy.value.status == 503 and int(busy.value.headers["Retry-After"]) >= 1
        with pytest.raises(ApiError) as late:
            await waiter
        assert late.value.status == 504 and gate.waiting == 0
        gate.release(0.0)
        async with gate.slot():
            assert gate.running == 1
        assert gate.running == 0

    asyncio.run(scenario())


def test_upload_names_and_data_urls():
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\x\\part 1.png") == "part 1.png"
    assert safe_name("") == "image" and safe_name("..") == "image"
    png = b"\x89PNG fake"
    assert decode_data_url("data:image/png;base64," + base64.b64encode(png).decode()) == png
    for bad in ("http://example.com/a.png", "file:///etc/passwd", "data:image/png;base64,@@@"):
        with pytest.raises(ApiError) as err:
            decode_data_url(bad)
        assert err.value.status == 400 and err.value.fix


def test_relabel_follows_the_threshold():
    v = Verdict(pred_label="anomalous", pred_score=0.7, threshold=0.5, explanation="patch_knn 0.70.")
    assert relabel(v, None) is v
    high = relabel(v, 0.8)
    assert high.pred_label == "normal" and high.threshold == 0.8 and "0.80" in high.explanation
    assert relabel(v, 0.6).explanation == v.explanation  # same label: explanation unchanged


def test_split_fix_and_chunks():
    assert split_fix("memory has no normals. Fix: import some") == ("memory has no normals", "import some")
    assert split_fix("plain") == ("plain", "")
    text = "one two three four five six seven"
    assert "".join(chunks(text)) == text and len(chunks(text)) == 3
