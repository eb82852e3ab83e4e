"""The retrieval embedder: CLIP when its weights resolve, else EfficientNet-Lite0 (real weights)."""

from __future__ import annotations

import numpy as np
import pytest

from memory.embed import (
    BackboneEmbedder,
    Embedder,
    clip_weights_resolve,
    default_embedder,
    get_embedder,
)
from tools.backbones import UnknownBackboneError
from tools.base import ToolSettings


def test_default_falls_back_to_efficientnet_lite0_without_clip_weights(tmp_path):
    settings = ToolSettings(device="cpu", threads=1, weights_dir=tmp_path,
                            clip_pretrained=str(tmp_path / "absent.pt"))
    assert not clip_weights_resolve(settings)
    emb = default_embedder(settings)
    assert isinstance(emb, Embedder)
    assert emb.model_id == "efficientnet_lite0@imagenet"
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)
    va, vb = emb.embed(a), emb.embed(np.ascontiguousarray(a[:, ::-1]))
    assert va.shape == (emb.dim,) == (1280,) and va.dtype == np.float32
    assert np.linalg.norm(va) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(emb.embed(a), va, atol=1e-6)  # deterministic
    noise = emb.embed(np.full((120, 90, 3), 30, np.uint8))
    assert float(va @ vb) > float(va @ noise)  # a flipped copy is nearer than a flat image


def test_random_clip_weights_do_not_count_and_names_are_checked():
    assert not clip_weights_resolve(ToolSettings(clip_pretrained="random"))
    with pytest.raises(UnknownBackboneError, match="valid backbones"):
        get_embedder("no_such_backbone", ToolSettings(device="cpu"))
    assert isinstance(get_embedder("efficientnet_lite0", ToolSettings(device="cpu")), BackboneEmbedder)
