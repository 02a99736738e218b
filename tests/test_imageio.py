"""Decoding every kind of image a user may hand us (files made at test time from real photos)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import FACES, needs_shared
from PIL import Image

from facial_search.errors import ImageDecodeError, ImageError, ImageTooLargeError, NotAnImageError, SkipReason
from facial_search.io.images import load_image, load_image_reduced

pytestmark = needs_shared


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


# ---- which error class each bad input gives (the web's status and the index's skip reason follow from it) ----
def _jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("make", "cls"),
    [
        (lambda tmp: b"", NotAnImageError),
        (lambda tmp: b"hello, this is text\n" * 20, NotAnImageError),
        (lambda tmp: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + b"0" * 500, NotAnImageError),
        (lambda tmp: tmp, NotAnImageError),  # a folder
        (lambda tmp: (FACES / "single_face.jpg").read_bytes()[:3000], ImageDecodeError),  # truncated JPEG
        (lambda tmp: _png_bytes(Image.open(FACES / "single_face.jpg"))[:5000], ImageDecodeError),  # truncated PNG
        (lambda tmp: _png_bytes(Image.new("1", (20000, 20000))), ImageTooLargeError),  # 400 Mpx from a few kB
    ],
    ids=["empty", "text", "pdf", "folder", "truncated-jpeg", "truncated-png", "png-bomb"],
)
def test_each_bad_input_gives_its_error_class(tmp_path, make, cls):
    source = make(tmp_path)
    with pytest.raises(cls) as info:
        load_image(source)
    assert isinstance(info.value, ImageError)
    others = {NotAnImageError, ImageDecodeError, ImageTooLargeError} - {cls}
    assert not isinstance(info.value, tuple(others))
    reasons = {
        NotAnImageError: SkipReason.NOT_AN_IMAGE,
        ImageDecodeError: SkipReason.UNREADABLE,
        ImageTooLargeError: SkipReason.TOO_LARGE,
    }
    assert info.value.skip_reason is reasons[cls]


def test_empty_file_on_disk_is_not_an_image(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(NotAnImageError, match="empty"):
        load_image(p)


def test_messages_use_the_given_name():
    with pytest.raises(NotAnImageError, match=r"^holiday\.jpg: not an image"):
        load_image(b"not a picture at all", name="holiday.jpg")


def test_max_pixels_is_the_decoded_bound():
    data = _png_bytes(Image.new("RGB", (300, 200), (10, 20, 30)))
    assert load_image(data, max_pixels=60_000).shape == (200, 300, 3)
    with pytest.raises(ImageTooLargeError, match="300x200"):
        load_image(data, max_pixels=59_999)
    with pytest.raises(ImageTooLargeError):  # no DCT scaling for PNG: shrink cannot help
        load_image(data, max_pixels=59_999, shrink=True)


def test_shrink_decodes_a_big_jpeg_at_a_reduced_scale():
    photo = Image.open(FACES / "single_face.jpg").convert("RGB")
    big = photo.resize((photo.width * 4, photo.height * 4))
    data = _jpeg_bytes(big, quality=85)
    full = big.width * big.height
    with pytest.raises(ImageTooLargeError):
        load_image(data, max_pixels=full // 5)
    rgb, factor = load_image_reduced(data, max_pixels=full // 5)
    assert factor == 4  # 1/2 still has full/4 > full/5 pixels; 1/4 is the first scale that fits
    assert rgb.shape == (-(-big.height // 4), -(-big.width // 4), 3)
    assert rgb.shape[0] * rgb.shape[1] <= full // 5
    # the reduced decode is the picture, not noise: close to Pillow's own downscale of the full image
    ref = np.asarray(big.resize((rgb.shape[1], rgb.shape[0]), Image.Resampling.BOX), dtype=np.float32)
    assert np.abs(rgb.astype(np.float32) - ref).mean() < 8
    # within the bound, nothing is reduced
    rgb1, factor1 = load_image_reduced(data, max_pixels=full)
    assert factor1 == 1 and rgb1.shape == (big.height, big.width, 3)


def test_shrink_keeps_exif_rotation(tmp_path):
    photo = Image.open(FACES / "single_face.jpg").convert("RGB")
    big = photo.resize((photo.width * 2, photo.height * 2))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _jpeg_bytes(big, exif=exif)
    rgb, factor = load_image_reduced(data, max_pixels=big.width * big.height // 3)
    assert factor == 2
    assert rgb.shape[:2] == (-(-big.width // 2), -(-big.height // 2))  # rotated: width and height swapped


def test_shrink_refuses_a_jpeg_too_big_to_shrink():
    from facial_search.io import images

    data = _jpeg_bytes(Image.new("RGB", (9000, 8000), (200, 180, 160)), quality=50)  # 72 Mpx, ~300 kB
    assert len(data) < 2_000_000
    assert 9000 * 8000 > images.MAX_SHRINK_PIXELS
    with pytest.raises(ImageTooLargeError, match="9000x8000"):
        load_image_reduced(data, max_pixels=16_000_000, shrink=True)
