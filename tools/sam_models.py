"""segment-anything loading: checkpoint resolution, a cached `SamPredictor`, and a tiny test model.

The checkpoint comes from ``settings.sam_checkpoint`` (ANOMALY_AGENT_SAM_CHECKPOINT); when unset, the
official file name of ``settings.sam_model_type`` (ANOMALY_AGENT_SAM_MODEL_TYPE, e.g.
``sam_vit_b_01ec64.pth``) is looked up in ANOMALY_AGENT_WEIGHTS_DIR and the torch cache. Without a
checkpoint the SAM tools fall back to box crops / colour clustering and say so.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path

from tools.base import ToolSettings
from tools.weights import WeightsNotFoundError, resolve_weight_file

SETTING = "ANOMALY_AGENT_SAM_CHECKPOINT"
SAM_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
    "default": "sam_vit_h_4b8939.pth",
}
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/{}"
TINY_SAM_TYPE = "tiny_test"
_PREDICTORS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def build_tiny_sam(checkpoint: str | None = None, img_size: int = 128):
    """A tiny random SAM from segment-anything's own building blocks (tests; masks mean nothing).

    Encoder: ViT depth 2, width 32, 16 px patches at `img_size`; prompt/decoder width 32,
    a 1-layer TwoWayTransformer. Loads `checkpoint` (a state dict) when given.
    """
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    dim, patch = 32, 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=dim, img_size=img_size, mlp_ratio=2,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=patch,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1], window_size=4, out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(img_size // patch, img_size // patch),
            input_image_size=(img_size, img_size), mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam.eval()


def _builders() -> dict:
    from segment_anything import sam_model_registry

    return {**sam_model_registry, TINY_SAM_TYPE: build_tiny_sam}


def resolve_sam_checkpoint(settings: ToolSettings) -> Path:
    """The SAM checkpoint file for `settings`.

    Raises:
        WeightsNotFoundError: unknown model type, or no file (names ANOMALY_AGENT_SAM_CHECKPOINT).
    """
    mtype = settings.sam_model_type
    known = mtype in SAM_FILES or mtype in ("default", TINY_SAM_TYPE)  # no import of segment_anything needed
    if not known and mtype not in _builders():
        msg = (
            f"unknown SAM model type {mtype!r} (ANOMALY_AGENT_SAM_MODEL_TYPE); valid: "
            f"{', '.join(sorted(_builders()))}"
        )
        raise WeightsNotFoundError(msg)
    filename = SAM_FILES.get(mtype, f"sam_{mtype}.pth")
    url = SAM_URL.format(filename) if mtype in SAM_FILES else None
    hint = f"curl -LO {url}" if url else "save the model's state_dict with torch.save"
    explicit = Path(settings.sam_checkpoint) if settings.sam_checkpoint is not None else None
    return resolve_weight_file(filename, settings, SETTING, hint, explicit=explicit, url=url)


def sam_weights_status(settings: ToolSettings) -> tuple[bool, str]:
    """For `doctor`: (ok, detail) about the SAM checkpoint. Never downloads."""
    try:
        path = resolve_sam_checkpoint(settings.model_copy(update={"allow_downloads": False}))
    except WeightsNotFoundError as exc:
        return False, f"{exc} (without it sam_crop returns plain box crops and parts_check clusters colours)"
    except ImportError as exc:  # pragma: no cover - segment-anything is a dependency
        return False, f"segment-anything is not installed: {exc}"
    return True, f"SAM {settings.sam_model_type}: {path}"


def _device(settings: ToolSettings) -> str:
    """The torch device string for `settings.device` ("auto" -> cuda when available)."""
    from tools.backbones import resolve_device

    return str(resolve_device(settings.device))


def load_sam(settings: ToolSettings):
    """The SAM model for `settings` (cached per checkpoint and device).

    Returns:
        (model, "") or (None, why not: the missing checkpoint and the setting to change). A missing
        checkpoint is not an error: the SAM tools fall back and report this reason.
    """
    import torch

    try:
        path = resolve_sam_checkpoint(settings)
    except WeightsNotFoundError as exc:
        return None, str(exc)
    key = (settings.sam_model_type, str(path), _device(settings))
    with _LOCK:
        if key not in _PREDICTORS:
            sam = _builders()[settings.sam_model_type](checkpoint=None)
            sam.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            _PREDICTORS[key] = sam.eval().to(_device(settings))
        return _PREDICTORS[key], ""
