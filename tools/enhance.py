"""`enhance`: contrast (CLAHE on L of LAB), non-local-means denoising and unsharp masking."""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from tools.base import Tool, ToolContext, ToolInput, ToolOutput
from tools.registry import register

Op = Literal["clahe", "denoise", "unsharp"]


def clahe(rgb: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE on the L channel of LAB. rgb: HxWx3 uint8 -> HxWx3 uint8."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    eq = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(tiles, tiles))
    lab[..., 0] = eq.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def denoise(rgb: np.ndarray, strength: float = 5.0) -> np.ndarray:
    """Non-local-means denoising (colour). strength: filter h, in grey levels."""
    return cv2.fastNlMeansDenoisingColored(rgb, None, float(strength), float(strength), 7, 21)


def unsharp(rgb: np.ndarray, amount: float = 1.0, sigma: float = 1.5) -> np.ndarray:
    """Unsharp mask: rgb + amount * (rgb - blur(rgb, sigma)). sigma in pixels."""
    blur = cv2.GaussianBlur(rgb, (0, 0), sigmaX=float(sigma))
    return cv2.addWeighted(rgb, 1.0 + amount, blur, -amount, 0.0)


@register
class Enhance(Tool):
    name = "enhance"
    description = (
        "Make faint defects easier to see: 'clahe' (local contrast), 'denoise' (non-local means), "
        "'unsharp' (sharpen edges), applied in the given order. Returns a new image id of the same size."
    )

    class Input(ToolInput):
        image_id: str | None = Field(None, description="image to enhance; default: the query")
        ops: list[Op] = Field(default_factory=lambda: ["clahe", "unsharp"], min_length=1)
        clahe_clip: float = Field(2.0, gt=0.0, le=40.0, description="CLAHE clip limit")
        denoise_strength: float = Field(5.0, gt=0.0, le=50.0, description="NL-means h")
        unsharp_amount: float = Field(1.0, ge=0.0, le=5.0)
        unsharp_sigma: float = Field(1.5, gt=0.0, le=20.0, description="pixels")

    class Output(ToolOutput):
        enhanced_id: str
        ops: list[str]

    def _run(self, args: Input, ctx: ToolContext) -> Output:
        image_id = ctx.require_image(args.image_id)
        src = ctx.images.get(image_id).pixels
        out = src
        for op in args.ops:
            if op == "clahe":
                out = clahe(out, args.clahe_clip)
            elif op == "denoise":
                out = denoise(out, args.denoise_strength)
            else:
                out = unsharp(out, args.unsharp_amount, args.unsharp_sigma)
        new_id = ctx.images.add_array(
            out, source=f"enhance({'+'.join(args.ops)}) of {image_id}", prefix="enh", parent=image_id
        )
        grey_in = cv2.cvtColor(src, cv2.COLOR_RGB2GRAY).astype(np.float32)
        grey_out = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).astype(np.float32)
        summary = (
            f"Applied {', '.join(args.ops)} to {image_id!r} -> {new_id!r} ({out.shape[1]}x{out.shape[0]} px, "
            f"same geometry). Grey-level contrast (std) {grey_in.std():.1f} -> {grey_out.std():.1f}; "
            f"mean absolute change {np.abs(grey_out - grey_in).mean():.1f} grey levels."
        )
        return self.Output(summary=summary, image_ids=[new_id], enhanced_id=new_id, ops=list(args.ops))
