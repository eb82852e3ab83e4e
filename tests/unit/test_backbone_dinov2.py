"""The DINOv2 patch backbone (AnomalyDINO-style) from a local weight file: a tiny random ViT built here,
saved in torch-hub and timm formats, loaded by the registry, used by patch_knn; doctor names the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from tools.backbones import DINOV2_FILE, get_backbone, weights_status
from tools.base import ToolContext, ToolSettings
from tools.images import ImageStore
from tools.weights import WeightsNotFoundError

PATCH, WIDTH, DEPTH = 14, 64, 2


@pytest.fixture
def tiny_vit():
    """A random DINOv2-shaped ViT: patch 14, width 64 (one 64-dim head), 2 blocks, layer scale, 4x4 grid."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=4 * PATCH, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=1,
                              init_values=1e-5, num_classes=0, dynamic_img_size=True, dynamic_img_pad=True)
    for block in model.blocks:  # layer scale 1e-5 would hide the blocks: make them count
        block.ls1.gamma.data.fill_(0.5)
        block.ls2.gamma.data.fill_(0.5)
    return model.eval()


def hub_state(model) -> dict:
    """The facebookresearch/dinov2 torch-hub layout: timm's keys plus an unused mask_token."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["mask_token"] = torch.zeros(1, WIDTH)
    return state


def test_hub_checkpoint_loads_and_taps_the_last_block(tiny_vit, tmp_path, no_caches):
    path = tmp_path / DINOV2_FILE
    torch.save(hub_state(tiny_vit), path)
    settings = ToolSettings(device="cpu", dinov2_weights=path)
    assert weights_status("dinov2_vit", settings) == (True, str(path))
    bb = get_backbone("dinov2_vit", settings)
    assert bb.layers == (f"block{DEPTH - 1}",) and bb.strides == (PATCH,) and bb.channels == (WIDTH,)
    x = bb.to_tensor(np.random.default_rng(0).integers(0, 255, (70, 98, 3), dtype=np.uint8))
    (fmap,) = bb.feature_maps(x)
    assert tuple(fmap.shape) == (1, WIDTH, 5, 7)  # ceil(70 / 14), ceil(98 / 14): any size works
    expected = tiny_vit.forward_intermediates(x, indices=[DEPTH - 1], norm=True, output_fmt="NCHW",
                                              intermediates_only=True)[0]
    assert torch.allclose(fmap, expected, atol=1e-5)  # the file's weights, not a fresh random init
    emb = bb.embed(np.zeros((40, 48, 3), np.uint8))
    assert emb.shape == (WIDTH,) and np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)


def test_timm_safetensors_from_weights_dir(tiny_vit, tmp_path, no_caches):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_vit.state_dict().items()}, str(path))
    bb = get_backbone("dinov2_vit", ToolSettings(device="cpu", dinov2_weights=path))
    x = bb.to_tensor(np.full((56, 56, 3), 100, np.uint8))
    expected = tiny_vit.forward_intermediates(x, indices=[DEPTH - 1], norm=True, output_fmt="NCHW",
                                              intermediates_only=True)[0]
    assert torch.allclose(bb.feature_maps(x)[0], expected, atol=1e-5)
    hub = tmp_path / "wd"
    hub.mkdir()
    torch.save(hub_state(tiny_vit), hub / DINOV2_FILE)
    assert weights_status("dinov2_vit", ToolSettings(weights_dir=hub)) == (True, str(hub / DINOV2_FILE))


def test_missing_weights_say_where_they_go(no_caches):
    ok, detail = weights_status("dinov2_vit", ToolSettings())
    assert not ok
    assert DINOV2_FILE in detail and "ANOMALY_AGENT_DINOV2_WEIGHTS" in detail and "dl.fbaipublicfiles.com" in detail
    with pytest.raises(WeightsNotFoundError):
        get_backbone("dinov2_vit", ToolSettings(device="cpu", dinov2_weights=no_caches / "nope.pth"))


def test_doctor_names_the_dinov2_weight_file(no_caches, isolated_home):
    from agent.config import load_config
    from agent.doctor import run_checks

    _, checks = run_checks(load_config(memory_path=no_caches / "m"))
    (check,) = [c for c in checks if "dinov2_vit" in c.name]
    assert not check.ok and not check.needed and DINOV2_FILE in check.detail


def test_patch_knn_runs_on_the_dinov2_backbone(tiny_vit, tmp_path, no_caches):
    from tests.agent_fixtures import texture, with_defect
    from tools.registry import create_tool

    path = tmp_path / DINOV2_FILE
    torch.save(hub_state(tiny_vit), path)
    store = ImageStore()
    refs = [store.add_array(texture(i), source=f"ref{i}", image_id=f"ref{i}") for i in range(3)]
    store.add_array(with_defect(texture(50)), source="query", image_id="query")
    ctx = ToolContext(store, settings=ToolSettings(device="cpu", backbone="dinov2_vit", dinov2_weights=path,
                                                   out_dir=tmp_path / "maps"))
    ctx.reference_ids.extend(refs)
    ctx.query_id = "query"
    tool = create_tool("patch_knn")
    tool.setup(ctx)
    out, _ = tool.timed_run({}, ctx)
    assert tool.backbone.name == "dinov2_vit"
    assert out.raw_score is not None and 0.0 <= out.score <= 1.0 and out.regions  # random weights: no quality claim
