"""Decoding every kind of image a user may hand us (files made at test time from real photos)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import FACES
from PIL import Image

from facial_search.errors import ImageError
from facial_search.io.images import load_image


def _png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def test_rgb_photo():
    a = load_image(FACES / "single_face.jpg")
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(p)


def test_text_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match="not an image"):
        load_image(p)


def test_truncated_jpeg(tmp_path):
    data = (FACES / "single_face.jpg").read_bytes()
    p = tmp_path / "truncated.jpg"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="truncated|corrupt|cannot decode"):
        load_image(p)


def test_decompression_bomb_refused_from_header(tmp_path):
    p = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(p)  # 400 Mpx, a few kB on disk
    assert p.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="too large"):
        load_image(p)


def test_grey_png_becomes_rgb(tmp_path):
    p = tmp_path / "grey.png"
    Image.open(FACES / "single_face.jpg").convert("L").save(p)
    a = load_image(p)
    assert a.shape[2] == 3 and np.array_equal(a[..., 0], a[..., 2])


def test_rgba_composited_on_white():
    a = load_image(FACES / "Image_with_alpha.png")
    assert a.shape[2] == 3
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(_png_bytes(im))[0, 0].tolist() == [255, 255, 255]


def test_sixteen_bit_png():
    g = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    a = load_image(_png_bytes(Image.fromarray(g)))
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert a[-1, -1, 0] > 200 and a[0, 0, 0] == 0  # scaled, not clipped


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.open(FACES / "single_face.jpg").convert("CMYK").save(p)
    assert load_image(p).shape[2] == 3


def test_animated_gif_first_frame():
    p = FACES / "no_time_for_that_tiny.gif"
    with Image.open(p) as im:
        assert im.is_animated
        first = np.asarray(im.convert("RGB"))
    a = load_image(p)
    assert a.shape == first.shape and np.array_equal(a, first)


def test_exif_rotation_applied(tmp_path):
    im = Image.open(FACES / "single_face.jpg").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    p = tmp_path / "rotated.jpg"
    im.save(p, exif=exif)
    a = load_image(p)
    assert a.shape[:2] == (im.width, im.height)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nope.jpg")
