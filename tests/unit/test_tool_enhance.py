"""enhance: each op changes the image the way it should and the result is a new image id."""

from __future__ import annotations

import numpy as np
import pytest

from tools.base import ToolContext, ToolError
from tools.images import ImageStore
from tools.registry import create_tool


def _ctx(img):
    store = ImageStore()
    store.add_array(img, source="t", image_id="query")
    return ToolContext(store, query_id="query")


def test_clahe_raises_local_contrast():
    rng = np.random.default_rng(0)
    img = (100 + rng.integers(0, 8, (64, 64, 1))).repeat(3, axis=2).astype(np.uint8)  # low contrast
    ctx = _ctx(img)
    out = create_tool("enhance").run({"ops": ["clahe"]}, ctx)
    new = ctx.images.get(out.enhanced_id)
    assert new.parent == "query" and new.pixels.shape == img.shape
    assert new.pixels.astype(float).std() > 1.5 * img.astype(float).std()
    assert out.image_ids == [out.enhanced_id] and out.score is None


def test_denoise_reduces_noise_and_unsharp_sharpens():
    rng = np.random.default_rng(1)
    clean = np.full((64, 64, 3), 128, np.uint8)
    clean[:, 32:] = 180
    noisy = np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255).astype(np.uint8)
    ctx = _ctx(noisy)
    out = create_tool("enhance").run({"ops": ["denoise"], "denoise_strength": 15}, ctx)
    den = ctx.images.get(out.enhanced_id).pixels.astype(float)
    assert np.abs(den - clean).mean() < 0.6 * np.abs(noisy.astype(float) - clean).mean()
    ctx2 = _ctx(clean)
    sharp = ctx2.images.get(create_tool("enhance").run({"ops": ["unsharp"], "unsharp_sigma": 2}, ctx2).enhanced_id)
    edge = sharp.pixels[32, 28:36, 0].astype(int)
    assert edge.max() > 180 and edge.min() < 128  # overshoot on both sides of the step


def test_enhance_rejects_unknown_op():
    with pytest.raises(ToolError, match="invalid arguments"):
        create_tool("enhance").run({"ops": ["blur"]}, _ctx(np.zeros((8, 8, 3), np.uint8)))
