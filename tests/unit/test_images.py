"""Image intake: every supported format and mode, and one exception type per failure kind."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tools.images import (
    CorruptImageError,
    ImageNotFoundError,
    ImageStore,
    ImageTooLargeError,
    NotAnImageError,
    UnknownImageIdError,
    UnsupportedModeError,
    encode_image,
    image_data_url,
    load_image,
)


def _rgb(h=20, w=30):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("BMP", "bmp"), ("TIFF", "tif"), ("WEBP", "webp")])
def test_lossless_formats_round_trip(tmp_path, fmt, ext):
    pixels = _rgb()
    path = tmp_path / f"a.{ext}"
    Image.fromarray(pixels).save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, pixels)


def test_jpeg_loads(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(_rgb()).save(path, format="JPEG")
    assert load_image(path).shape == (20, 30, 3)


def test_sixteen_bit_tiff_maps_full_range(tmp_path):
    arr = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    path = tmp_path / "a.tif"
    Image.fromarray(arr).save(path)
    out = load_image(path)
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1"])
def test_modes_become_rgb(tmp_path, mode):
    img = Image.fromarray(_rgb()).convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    path = tmp_path / f"a.{fmt.lower()}"
    img.save(path, format=fmt)
    out = load_image(path)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    path = tmp_path / "t.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert (load_image(path) == 255).all()


def test_exif_orientation_applied(tmp_path):
    img = Image.fromarray(_rgb(10, 40))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "r.jpg"
    img.save(path, format="JPEG", exif=exif)
    assert load_image(path).shape == (40, 10, 3)


def test_bytes_input():
    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, format="PNG")
    assert load_image(buf.getvalue()).shape == (20, 30, 3)


def test_missing_file(tmp_path):
    with pytest.raises(ImageNotFoundError) as err:
        load_image(tmp_path / "nope.png")
    assert "nope.png" in str(err.value) and "Fix:" in str(err.value)


def test_not_an_image(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("hello, not pixels")
    with pytest.raises(NotAnImageError, match="x.png: not an image"):
        load_image(path)


def test_truncated(tmp_path):
    path = tmp_path / "t.png"
    Image.fromarray(_rgb(200, 200)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError, match="t.png: truncated or corrupt"):
        load_image(path)


def test_too_large(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(_rgb(100, 100)).save(path)
    with pytest.raises(ImageTooLargeError, match="10000 pixels > 5000"):
        load_image(path, max_pixels=5000)


def test_unsupported_mode(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.zeros((4, 4), dtype=np.float32), mode="F").save(path)
    with pytest.raises(UnsupportedModeError, match="mode 'F'"):
        load_image(path)


def test_store_ids_and_root_mapping(tmp_path):
    store = ImageStore()
    qid = store.add_array(_rgb(100, 200), source="q", image_id="query")
    crop = store.add_array(_rgb(50, 50), source="crop", prefix="zoom", parent=qid, offset_xy=(100, 40), scale=0.5)
    assert crop == "zoom0"
    root, box = store.to_root(crop, (10, 10, 20, 20))
    assert root == "query" and box == (105, 45, 110, 50)
    with pytest.raises(UnknownImageIdError, match="known ids: query, zoom0"):
        store.get("nope")


def test_encode_downscales():
    data = encode_image(_rgb(100, 400), max_side=100, fmt="JPEG")
    assert load_image(data).shape == (25, 100, 3)
    assert image_data_url(_rgb(), fmt="PNG").startswith("data:image/png;base64,")
