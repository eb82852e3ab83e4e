"""Image intake: validate a file (or bytes) once and hand out ids.

Conversion rule to RGB uint8 (documented in README, "Image intake"):
- EXIF orientation is applied first.
- ``L``/``1``/``P``/``CMYK``/``YCbCr``/``LAB``/``HSV``: converted by Pillow to RGB (grey is replicated).
- ``LA``/``RGBA``/``PA``/``P`` with transparency: alpha-composited onto white.
- 16-bit (``I;16``, ``I;16B``, ``I;16L``, ``I``): the full 16-bit range maps linearly to 8 bits
  (``v / 257``, rounded; ``I`` values are clipped to 0..65535 first). No per-image stretching, so
  intensities stay comparable between images.
- ``F`` (float) and anything else: `UnsupportedModeError`.

Size limits: ``max_pixels`` (default `DEFAULT_MAX_PIXELS` = 40 MP, checked from the header before any
decoding; it replaces Pillow's own decompression-bomb limit, so raising it works). Override with the ``max_image_pixels``
config key or ``ANOMALY_AGENT_MAX_IMAGE_PIXELS``. ``min_side`` (the ``min_image_side`` config key,
``ANOMALY_AGENT_MIN_IMAGE_SIDE``, default `DEFAULT_MIN_SIDE` = 32 px for the agent): an image whose
shorter side is below it is too small to judge. Only regular files are opened (a named pipe or a device
is refused before `open`, which could block forever).
"""

from __future__ import annotations

import hashlib
import io
import stat
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MIN_SIDE = 32
_PIL_LIMIT_LOCK = threading.Lock()
_pil_limit_users = 0
_pil_saved_limit: int | None = None


@contextmanager
def _pillow_limit_off():
    """Lift Pillow's global `Image.MAX_IMAGE_PIXELS` while any thread opens or decodes through us (our own
    `max_pixels` check from the header applies instead, so the setting, not Pillow's default, decides);
    restored when the last one is done. Decoding in other threads is not serialised."""
    global _pil_limit_users, _pil_saved_limit
    with _PIL_LIMIT_LOCK:
        if _pil_limit_users == 0:
            _pil_saved_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pil_limit_users += 1
    try:
        yield
    finally:
        with _PIL_LIMIT_LOCK:
            _pil_limit_users -= 1
            if _pil_limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _pil_saved_limit
SUPPORTED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageInputError(ValueError):
    """Base class of every image-intake failure; the message names the file, the cause and the fix."""

    cause = "cannot read the image"
    fix = "check the file"

    def __init__(self, source: str, detail: str = "") -> None:
        self.source = source
        self.detail = detail
        cause = f"{self.cause} ({detail})" if detail else self.cause
        super().__init__(f"{source}: {cause}. Fix: {self.fix}")


class ImageNotFoundError(ImageInputError):
    cause = "file not found"
    fix = "check the path (relative paths resolve from the current directory)"


class NotAnImageError(ImageInputError):
    cause = "not an image"
    fix = f"pass a {', '.join(SUPPORTED_FORMATS)} file"


class CorruptImageError(ImageInputError):
    cause = "truncated or corrupt image data"
    fix = "re-export or re-copy the file; it cannot be decoded completely"


class ImageTooLargeError(ImageInputError):
    cause = "image too large"
    fix = ("downscale it, or raise the limit with ANOMALY_AGENT_MAX_IMAGE_PIXELS or the max_image_pixels "
           "config key")


class ImageTooSmallError(ImageInputError):
    cause = "image too small to judge"
    fix = ("pass a larger image, or lower the limit with ANOMALY_AGENT_MIN_IMAGE_SIDE or the min_image_side "
           "config key")


class NotARegularFileError(ImageInputError):
    cause = "not a regular file"
    fix = "pass an image file (named pipes, sockets and devices are not read)"


class UnsupportedModeError(ImageInputError):
    cause = "unsupported pixel mode"
    fix = "save it as 8-bit or 16-bit grey, RGB or RGBA"


class UnknownImageIdError(KeyError):
    """An image id that the store never handed out."""

    def __init__(self, image_id: str, known: list[str]) -> None:
        self.image_id = image_id
        super().__init__(f"unknown image id {image_id!r}; known ids: {', '.join(known) or 'none'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


def _to_rgb(img: Image.Image, source: str) -> np.ndarray:
    """Convert a decoded Pillow image to an HxWx3 uint8 array by the module's documented rule."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr, 0, 65535) / 257.0
        grey = np.rint(arr).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("LA", "RGBA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode in ("RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGB"))
    raise UnsupportedModeError(source, f"mode {mode!r}")


def load_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1) -> np.ndarray:
    """Read and validate one image.

    Args:
        source: a path, or the encoded bytes of an image.
        max_pixels: width*height limit, checked from the header before decoding.
        min_side: the smallest accepted shorter side, in pixels.

    Returns:
        HxWx3 uint8 RGB array, EXIF orientation applied.

    Raises:
        ImageInputError: one of its subclasses, naming the file, the cause and the fix.
    """
    return load_image_with_mode(source, max_pixels, min_side)[0]


def _open_stream(source: str | Path | bytes) -> tuple[str, io.IOBase]:
    if isinstance(source, bytes | bytearray):
        return "<bytes>", io.BytesIO(source)
    path = Path(source)
    name = str(source)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageNotFoundError(name) from None
    except PermissionError as exc:
        raise NotAnImageError(name, f"cannot read it: {exc.strerror}") from None
    except OSError as exc:  # name too long, a loop of links, ...
        raise ImageNotFoundError(name, exc.strerror or type(exc).__name__) from None
    if stat.S_ISDIR(st.st_mode):
        raise NotAnImageError(name, "it is a directory")
    if not stat.S_ISREG(st.st_mode):
        kind = "a named pipe" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        raise NotARegularFileError(name, f"it is {kind}")
    try:
        return name, path.open("rb")
    except OSError as exc:
        raise NotAnImageError(name, f"cannot read it: {exc.strerror or exc}") from None


def load_image_with_mode(
    source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1
) -> tuple[np.ndarray, str]:
    """`load_image`, also returning the file's Pillow mode before conversion ("L", "RGB", "I;16", ...)."""
    name, stream = _open_stream(source)
    try:
        with _pillow_limit_off(), warnings.catch_warnings():
            # Pillow's own bomb limit (89 MP) would refuse before ours: ours, from the header, replaces it
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(stream)
            except UnidentifiedImageError as exc:
                raise NotAnImageError(name, "unrecognised format") from exc
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageTooLargeError(name, str(exc)) from exc
            except (OSError, SyntaxError, ValueError, EOFError) as exc:  # header cut short ("Truncated File Read")
                raise CorruptImageError(name, str(exc) or type(exc).__name__) from exc
        if img.format not in SUPPORTED_FORMATS:
            raise NotAnImageError(name, f"format {img.format} is not supported")
        _check_size(name, *img.size, max_pixels, min_side)
        mode = img.mode
        with _pillow_limit_off():  # our limit was checked above; some decoders (TIFF tiles) check again
            try:
                img.load()
                img = ImageOps.exif_transpose(img)
            except (OSError, SyntaxError, ValueError) as exc:
                raise CorruptImageError(name, str(exc)) from exc
        return np.ascontiguousarray(_to_rgb(img, name)), mode
    finally:
        stream.close()


class UnsupportedArrayError(ImageInputError):
    cause = "not an image the API can take"
    fix = ("pass a path, encoded bytes, a PIL image, or a numpy uint8 array of shape HxW (grey) or HxWx3 (RGB), "
           "e.g. np.clip(x * 255, 0, 255).astype(np.uint8) for floats in 0..1")


def _check_size(name: str, width: int, height: int, max_pixels: int, min_side: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(name, f"{width}x{height} = {width * height} pixels > {max_pixels}")
    if width == 0 or height == 0:
        raise CorruptImageError(name, f"empty image {width}x{height}")
    if min(width, height) < min_side:
        raise ImageTooSmallError(name, f"{width}x{height}; the shorter side must be at least {min_side} px")


def load_any(source, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1) -> tuple[np.ndarray, str | None, str]:
    """An image from a path, encoded bytes, a PIL image or a numpy array: (HxWx3 uint8 RGB, mode, label).

    Arrays must be uint8, HxW (grey, mode "L") or HxWx3 (RGB); PIL images follow the module's conversion
    rule. Size limits apply to all. The label names the source in messages ("<numpy array 64x48>").

    Raises:
        ImageInputError: a subclass naming the cause and the fix (`UnsupportedArrayError` for other types).
    """
    if isinstance(source, str | Path | bytes | bytearray):
        pixels, mode = load_image_with_mode(source, max_pixels, min_side)
        return pixels, mode, "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    if isinstance(source, Image.Image):
        label = f"<PIL image {source.width}x{source.height} {source.mode}>"
        _check_size(label, source.width, source.height, max_pixels, min_side)
        return np.ascontiguousarray(_to_rgb(source, label)), source.mode, label
    if isinstance(source, np.ndarray):
        shape = "x".join(str(d) for d in source.shape)
        label = f"<numpy array {shape}>"
        grey = source.ndim == 2
        if source.dtype != np.uint8 or not (grey or (source.ndim == 3 and source.shape[2] == 3)):
            raise UnsupportedArrayError(label, f"shape {source.shape}, dtype {source.dtype}")
        _check_size(label, source.shape[1], source.shape[0], max_pixels, min_side)
        pixels = np.repeat(source[..., None], 3, axis=2) if grey else source
        return np.ascontiguousarray(pixels), "L" if grey else "RGB", label
    raise UnsupportedArrayError(f"<{type(source).__name__}>", f"got a {type(source).__name__}")


@dataclass
class StoredImage:
    """One image in an `ImageStore`.

    Attributes:
        id: the store's id ("query", "ref0", "zoom1", ...).
        pixels: HxWx3 uint8 RGB.
        source: the path it came from, or a description of how it was derived.
        parent: id of the image it was derived from (crop, alignment), or None.
        offset_xy: where pixel (0, 0) of this image lies in the parent, in parent pixels.
        scale: parent pixels per pixel of this image (a 2x upsampled crop has scale 0.5).
        mode: the file's Pillow mode before conversion to RGB ("L", "RGB", ...), None for arrays.
    """

    id: str
    pixels: np.ndarray
    source: str
    parent: str | None = None
    offset_xy: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    mode: str | None = None
    _digest: str | None = field(default=None, repr=False)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def digest(self) -> str:
        """sha256 of the pixels (hex); used as a cache key for features."""
        if self._digest is None:
            self._digest = hashlib.sha256(self.pixels.tobytes()).hexdigest()
        return self._digest


class ImageStore:
    """Validated images, handed out by id. Tools take ids, never pixels in JSON."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1) -> None:
        self.max_pixels = max_pixels
        self.min_side = min_side
        self._images: dict[str, StoredImage] = {}
        self._counters: dict[str, int] = {}

    def _new_id(self, prefix: str) -> str:
        n = self._counters.get(prefix, 0)
        while f"{prefix}{n}" in self._images:
            n += 1
        self._counters[prefix] = n + 1
        return f"{prefix}{n}"

    def add_file(self, source, image_id: str | None = None, prefix: str = "img") -> str:
        """Validate and store an image (a path, encoded bytes, a PIL image or a uint8 HxW / HxWx3 array:
        `load_any`); returns its id."""
        pixels, mode, label = load_any(source, self.max_pixels, self.min_side)
        image_id = self.add_array(pixels, source=label, image_id=image_id, prefix=prefix)
        self._images[image_id].mode = mode
        return image_id

    def add_array(
        self,
        pixels: np.ndarray,
        source: str,
        image_id: str | None = None,
        prefix: str = "img",
        parent: str | None = None,
        offset_xy: tuple[float, float] = (0.0, 0.0),
        scale: float = 1.0,
    ) -> str:
        """Store an HxWx3 uint8 array (e.g. a crop derived from `parent`); returns its id."""
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            msg = f"expected HxWx3 uint8 pixels, got shape {pixels.shape} dtype {pixels.dtype}"
            raise ValueError(msg)
        if parent is not None:
            self.get(parent)
        image_id = image_id or self._new_id(prefix)
        self._images[image_id] = StoredImage(
            image_id, np.ascontiguousarray(pixels), source, parent, offset_xy, scale
        )
        return image_id

    def get(self, image_id: str) -> StoredImage:
        try:
            return self._images[image_id]
        except KeyError:
            raise UnknownImageIdError(image_id, list(self._images)) from None

    def ids(self) -> list[str]:
        return list(self._images)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._images

    def to_root(self, image_id: str, box_xyxy: tuple[float, float, float, float]) -> tuple[str, tuple[int, int, int, int]]:
        """Map a box in `image_id`'s pixels back to its root image (following parents).

        Returns:
            (root id, box in root pixels, rounded outwards and clipped to the root image).
        """
        x0, y0, x1, y1 = box_xyxy
        current = self.get(image_id)
        while current.parent is not None:
            ox, oy = current.offset_xy
            s = current.scale
            x0, y0, x1, y1 = ox + x0 * s, oy + y0 * s, ox + x1 * s, oy + y1 * s
            current = self.get(current.parent)
        w, h = current.width, current.height
        box = (
            int(np.clip(np.floor(x0), 0, w)),
            int(np.clip(np.floor(y0), 0, h)),
            int(np.clip(np.ceil(x1), 0, w)),
            int(np.clip(np.ceil(y1), 0, h)),
        )
        return current.id, box


def encode_image(pixels: np.ndarray, max_side: int | None = None, fmt: str = "PNG", quality: int = 90) -> bytes:
    """Encode HxWx3 uint8 RGB pixels as PNG or JPEG bytes, downscaled so the longer side <= max_side.

    Downscaling keeps the aspect ratio (Lanczos). `fmt` is "PNG" or "JPEG" (`quality` applies to JPEG).
    """
    img = Image.fromarray(pixels)
    if max_side is not None and max(img.size) > max_side:
        factor = max_side / max(img.size)
        size = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    fmt = fmt.upper()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=quality)
    elif fmt == "PNG":
        img.save(buf, format="PNG")
    else:
        msg = f"unsupported encoding {fmt!r}; use PNG or JPEG"
        raise ValueError(msg)
    return buf.getvalue()


def image_data_url(pixels: np.ndarray, max_side: int | None = None, fmt: str = "PNG") -> str:
    """A ``data:image/...;base64,...`` URL of the (downscaled) image, for chat `image_url` blocks."""
    import base64

    fmt = fmt.upper()
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(encode_image(pixels, max_side, fmt)).decode('ascii')}"


def image_content_block(pixels: np.ndarray, max_side: int | None = None, fmt: str = "PNG") -> dict:
    """A LangChain/OpenAI chat content block: ``{"type": "image_url", "image_url": {"url": data_url}}``."""
    return {"type": "image_url", "image_url": {"url": image_data_url(pixels, max_side, fmt)}}
