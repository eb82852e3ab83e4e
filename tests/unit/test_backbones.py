"""Backbone registry and weight resolution (real EfficientNet-Lite0 weights; tiny random CLIP)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tools.backbones import (
    UnknownBackboneError,
    backbone_names,
    clip_backbone_from_model,
    get_backbone,
    weights_status,
)
from tools.base import ToolSettings
from tools.weights import WeightsNotFoundError, resolve_weight_file


def test_efficientnet_features_match_declared_strides_and_channels():
    bb = get_backbone("efficientnet_lite0", ToolSettings(device="cpu"))
    assert bb.model_id == "efficientnet_lite0@imagenet"
    assert bb is get_backbone("efficientnet_lite0", ToolSettings(device="cpu"))  # cached
    x = bb.to_tensor(np.full((100, 150, 3), 128, np.uint8), (96, 160))
    maps = bb.feature_maps(x)
    assert len(maps) == len(bb.layers) == len(bb.strides) == len(bb.channels)
    for fmap, stride, ch in zip(maps, bb.strides, bb.channels, strict=True):
        assert tuple(fmap.shape) == (1, ch, 96 // stride, 160 // stride)
    every = bb.feature_maps(x, list(bb.taps))
    assert [m.shape[1] for m in every] == [c for _, c in bb.taps.values()]


def test_efficientnet_has_real_weights_and_embeds_by_content():
    bb = get_backbone("efficientnet_lite0", ToolSettings(device="cpu"))
    rng = np.random.default_rng(0)
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::8] = 255
    noise = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    e1, e2, e3 = bb.embed(stripes), bb.embed(stripes[:, ::-1].copy()), bb.embed(noise)
    assert e1.shape == (1280,) and e1.dtype == np.float32
    assert np.linalg.norm(e1) == pytest.approx(1.0, abs=1e-5)
    # pretrained features: a flipped copy is far closer than unrelated noise
    assert float(e1 @ e2) > float(e1 @ e3) + 0.1


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(UnknownBackboneError) as err:
        get_backbone("resnet9000")
    for name in backbone_names():
        assert name in str(err.value)
    assert {"efficientnet_lite0", "wide_resnet50_2", "clip_vit"} <= set(backbone_names())


def test_weights_status_without_loading(no_caches):
    ok, detail = weights_status("efficientnet_lite0", ToolSettings())
    assert ok and detail.endswith(".pth")
    ok, detail = weights_status("wide_resnet50_2", ToolSettings())
    assert not ok
    assert "ANOMALY_AGENT_WEIGHTS_DIR" in detail and "wide_resnet50_2-95faca4d.pth" in detail
    ok, detail = weights_status("nope", ToolSettings())
    assert not ok and "valid backbones" in detail


def test_wide_resnet_error_names_setting(no_caches):
    with pytest.raises(WeightsNotFoundError) as err:
        get_backbone("wide_resnet50_2", ToolSettings(device="cpu", weights_dir=no_caches / "w"))
    msg = str(err.value)
    assert "ANOMALY_AGENT_WEIGHTS_DIR" in msg and "ANOMALY_AGENT_ALLOW_DOWNLOADS" in msg
    assert "torchvision" in msg  # the command that would fetch it


def test_resolve_order_explicit_then_weights_dir_then_caches(no_caches, monkeypatch):
    s = ToolSettings(weights_dir=no_caches / "w")
    (no_caches / "w").mkdir()
    hub = no_caches / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "a.pt").write_bytes(b"hub")
    assert resolve_weight_file("a.pt", s, "X", "fetch") == hub / "a.pt"
    (no_caches / "w" / "a.pt").write_bytes(b"dir")
    assert resolve_weight_file("a.pt", s, "X", "fetch") == no_caches / "w" / "a.pt"
    explicit = no_caches / "elsewhere.pt"
    explicit.write_bytes(b"x")
    assert resolve_weight_file("a.pt", s, "X", "fetch", explicit=explicit) == explicit
    snap = no_caches / "hf" / "models--org--m" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "b.bin").write_bytes(b"hf")
    assert resolve_weight_file("b.bin", s, "X", "fetch", hf_repo="org/m") == snap / "b.bin"
    with pytest.raises(WeightsNotFoundError):
        resolve_weight_file("b.bin", s, "X", "fetch", hf_repo="org/other")


def test_missing_explicit_and_missing_file_errors(no_caches):
    s = ToolSettings()
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weight_file("c.pt", s, "ANOMALY_AGENT_CLIP_PRETRAINED", "get-it", explicit=no_caches / "none.pt")
    assert "ANOMALY_AGENT_CLIP_PRETRAINED" in str(err.value) and "get-it" in str(err.value)
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weight_file("c.pt", s, "ANOMALY_AGENT_CLIP_PRETRAINED", "get-it", url="http://x/c.pt")
    msg = str(err.value)
    assert "ANOMALY_AGENT_WEIGHTS_DIR" in msg and "ANOMALY_AGENT_CLIP_PRETRAINED" in msg and "get-it" in msg
    assert isinstance(err.value, FileNotFoundError)


@pytest.fixture
def tiny_clip(tmp_path):
    import open_clip

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "tiny-bb-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    torch.manual_seed(0)
    return open_clip.create_model("tiny-bb-test", pretrained=None)


def test_clip_backbone_from_tiny_model(tiny_clip):
    bb = clip_backbone_from_model(tiny_clip, "tiny", torch.device("cpu"))
    assert bb.strides == (8,) * len(bb.layers) and bb.channels == (64,) * len(bb.layers)
    maps = bb.feature_maps(bb.to_tensor(np.zeros((40, 48, 3), np.uint8), (32, 32)))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 4, 4)] * len(bb.layers)
    emb = bb.embed(np.zeros((40, 48, 3), np.uint8))
    assert emb.shape == (32,) and np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)


def test_clip_vit_loads_checkpoint_path_and_names_setting(tiny_clip, tmp_path, no_caches):
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_clip.state_dict(), ckpt)
    s = ToolSettings(device="cpu", clip_model="tiny-bb-test", clip_pretrained=str(ckpt))
    assert weights_status("clip_vit", s) == (True, str(ckpt))
    bb = get_backbone("clip_vit", s)
    assert bb.name == "clip_vit" and "tiny-bb-test" in bb.model_id
    missing = ToolSettings(device="cpu", clip_model="tiny-bb-test", clip_pretrained=str(tmp_path / "no.pt"))
    with pytest.raises(WeightsNotFoundError) as err:
        get_backbone("clip_vit", missing)
    assert "ANOMALY_AGENT_CLIP_PRETRAINED" in str(err.value)
    ok, detail = weights_status("clip_vit", ToolSettings())  # default tag, nothing cached
    assert not ok and "ANOMALY_AGENT_CLIP_PRETRAINED" in detail
