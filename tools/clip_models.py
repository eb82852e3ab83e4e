"""open_clip loading with offline weight resolution, plus tiny random configs for tests.

`clip_pretrained` may be:
- a pretrained tag of `clip_model` (e.g. "laion400m_e32"): its file is looked up in
  ANOMALY_AGENT_WEIGHTS_DIR, the torch hub cache, ``~/.cache/clip`` and the Hugging Face cache
  (open_clip's own file names), and downloaded only when ``allow_downloads`` is on;
- a path to a checkpoint file (.pt/.bin/.safetensors);
- "random": random initialisation (tests and smoke runs only; scores mean nothing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.base import ToolSettings
from tools.tempdirs import temp_dir
from tools.weights import WeightsNotFoundError

RANDOM_TAG = "random"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipBundle:
    """A loaded open_clip model and what is needed to feed it.

    Attributes:
        model: the open_clip model (eval mode).
        tokenizer: open_clip tokenizer (list[str] -> LongTensor).
        image_size: square input side, pixels.
        mean, std: RGB normalisation (0..1 scale).
        device: torch device string.
        key: cache key "model|pretrained".
    """

    model: object
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: str
    key: str

    def encode_images(self, crops: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Embed RGB crops (each HxWx3 uint8, any size; squashed to the model's square input).

        Returns:
            NxD float32, L2-normalised.
        """
        import cv2
        import torch

        s = self.image_size
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        out = []
        for i in range(0, len(crops), batch_size):
            batch = []
            for crop in crops[i : i + batch_size]:
                interp = cv2.INTER_AREA if min(crop.shape[:2]) > s else cv2.INTER_CUBIC
                x = cv2.resize(crop, (s, s), interpolation=interp).astype(np.float32) / 255.0
                batch.append(((x - mean) / std).transpose(2, 0, 1))
            tensor = torch.from_numpy(np.stack(batch)).to(self.device)
            with torch.inference_mode():
                feats = self.model.encode_image(tensor).float()
                feats = torch.nn.functional.normalize(feats, dim=-1)
            out.append(feats.cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Embed texts. Returns NxD float32, L2-normalised."""
        import torch

        tokens = self.tokenizer(texts).to(self.device)
        with torch.inference_mode():
            feats = self.model.encode_text(tokens).float()
            feats = torch.nn.functional.normalize(feats, dim=-1)
        return feats.cpu().numpy().astype(np.float32)


def resolve_clip_weights(settings: ToolSettings) -> Path | None:
    """The checkpoint file for `settings.clip_model` / `clip_pretrained`, or None for "random".

    Raises:
        WeightsNotFoundError: unknown model/tag or no file found offline; the message names
            ANOMALY_AGENT_CLIP_PRETRAINED / ANOMALY_AGENT_WEIGHTS_DIR and how to fetch the file.
    """
    from tools.open_clip_meta import registry

    open_clip = registry()  # names and tags only: open_clip itself is not imported for a lookup
    model, tag = settings.clip_model, settings.clip_pretrained
    if model not in open_clip.list_models():
        msg = (
            f"unknown open_clip model {model!r} (ANOMALY_AGENT_CLIP_MODEL); valid names include "
            f"{', '.join(open_clip.list_models()[:12])}, ... (see open_clip.list_models())"
        )
        raise WeightsNotFoundError(msg)
    if tag == RANDOM_TAG:
        return None
    # one resolver for CLIP files, shared with the clip_vit backbone
    from tools.backbones import _clip_weight_path

    return _clip_weight_path(settings)


def clip_weights_status(settings: ToolSettings) -> tuple[bool, str]:
    """For `doctor`: (ok, detail) about the configured CLIP weights. Never downloads."""
    offline = settings.model_copy(update={"allow_downloads": False})
    try:
        path = resolve_clip_weights(offline)
    except WeightsNotFoundError as exc:
        return False, str(exc)
    except ImportError as exc:  # pragma: no cover - open_clip is a dependency
        return False, f"open_clip is not installed: {exc}"
    if path is None:
        return True, f"{settings.clip_model} with random weights (clip_pretrained='random'; tests only)"
    return True, f"{settings.clip_model} / {settings.clip_pretrained}: {path}"


def _device(settings: ToolSettings) -> str:
    """The torch device string for `settings.device` ("auto" -> cuda when available)."""
    from tools.backbones import resolve_device

    return str(resolve_device(settings.device))


def load_clip(settings: ToolSettings) -> ClipBundle:
    """Build the open_clip model named in `settings` with its resolved weights (eval mode)."""
    import open_clip
    import torch

    path = resolve_clip_weights(settings)
    device = _device(settings)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = open_clip.create_model(
        settings.clip_model, pretrained=str(path) if path is not None else None, device=device
    )
    model.eval()
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, tuple | list) else size)
    cfg = {} if path is None else (open_clip.get_pretrained_cfg(settings.clip_model, settings.clip_pretrained) or {})
    mean = tuple(cfg.get("mean") or getattr(model.visual, "image_mean", None) or CLIP_MEAN)
    std = tuple(cfg.get("std") or getattr(model.visual, "image_std", None) or CLIP_STD)
    return ClipBundle(
        model=model, tokenizer=open_clip.get_tokenizer(settings.clip_model), image_size=size,
        mean=mean, std=std, device=device, key=f"{settings.clip_model}|{settings.clip_pretrained}",
    )


TINY_CLIP_NAME = "tiny-test-clip"


def register_tiny_clip_config(name: str = TINY_CLIP_NAME, image_size: int = 64) -> str:
    """Register a tiny random open_clip config (2-layer 64-wide towers) for tests; returns its name.

    Use with ``clip_model=name, clip_pretrained="random"``. No weights are needed.
    """
    import open_clip

    if name in open_clip.list_models():
        return name
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    folder = temp_dir("tiny-open-clip-")
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return name
