"""Decode any image a user may hand us into a 3-channel RGB array.

MediaPipe needs ``(H, W, 3) uint8`` RGB (a single-channel image fails inside its graph), so every image is
normalised here, at the edge: EXIF orientation applied, grey / palette / CMYK / 16-bit / float converted,
alpha composited on white, the first frame of an animation taken, and images above ``max_pixels`` refused
from their header, before their pixels are decoded (decompression bombs). With ``shrink=True`` (the web app) a
JPEG over ``max_pixels`` is decoded at 1/2, 1/4 or 1/8 scale instead (libjpeg's DCT scaling), so its full-size
pixels never exist in memory.

Errors are typed (:mod:`facial_search.errors`), all subclasses of :class:`~facial_search.errors.ImageError`:
:class:`~facial_search.errors.NotAnImageError` (empty, a folder, or no image format),
:class:`~facial_search.errors.ImageTooLargeError` (too many pixels) and
:class:`~facial_search.errors.ImageDecodeError` (truncated, corrupt, unsupported pixel format).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facial_search.errors import ImageDecodeError, ImageTooLargeError, NotAnImageError

#: Largest image accepted by default, in pixels (width x height). 64 megapixels holds any camera photo; a
#: 20000x20000 PNG (400 Mpx, 1.2 GB decoded) is refused from its header alone.
MAX_PIXELS = 64_000_000

#: Largest JPEG that ``shrink=True`` decodes at a reduced scale, in pixels (as declared by its header):
#: libjpeg holds a progressive JPEG's DCT coefficients at full size (about 2-6 bytes a pixel) even when it
#: decodes at 1/8, so a bigger one is refused like any other image.
MAX_SHRINK_PIXELS = 64_000_000

#: File name suffixes picked up when a folder is indexed.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})

_JPEG_SCALES = (2, 4, 8)


def load_image(
    source: str | os.PathLike | bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    shrink: bool = False,
    name: str | None = None,
) -> np.ndarray:
    """Decode an image file (or its bytes) to RGB.

    Args:
        source: a path, or the encoded bytes (an upload).
        max_pixels: most pixels (width x height) of the decoded image; a larger image is refused from its
            header, before decoding (decompression-bomb guard), unless ``shrink`` can bring it within.
        shrink: decode a JPEG over ``max_pixels`` (and at most :data:`MAX_SHRINK_PIXELS`) at 1/2, 1/4 or 1/8
            scale, the first that fits (see :func:`load_image_reduced` for the factor).
        name: what error messages call the image (default: the path, or ``<bytes>``).

    Returns:
        ``(H, W, 3) uint8`` RGB array, EXIF rotation applied; first frame of an animated image.

    Raises:
        NotAnImageError: empty data or file, a folder, or bytes of no image format.
        ImageTooLargeError: more than ``max_pixels`` pixels (after ``shrink``, where it applies).
        ImageDecodeError: truncated or corrupt data, or an unsupported pixel format.
        FileNotFoundError: the path does not exist.
    """
    return load_image_reduced(source, max_pixels=max_pixels, shrink=shrink, name=name)[0]


def load_image_reduced(
    source: str | os.PathLike | bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    shrink: bool = True,
    name: str | None = None,
) -> tuple[np.ndarray, int]:
    """:func:`load_image` that also says by which factor the image was reduced on decode.

    Returns:
        ``(rgb, factor)``: ``rgb`` as :func:`load_image`, ``factor`` 1, 2, 4 or 8: a pixel coordinate in
        ``rgb`` times ``factor`` is (to within ``factor`` pixels) the coordinate in the file's image.

    Raises:
        as :func:`load_image`.
    """
    if name is None:
        name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    if isinstance(source, bytes | bytearray):
        if not source:
            raise NotAnImageError(f"{name}: empty data, not an image")
        fp: io.BytesIO | Path = io.BytesIO(source)
    else:
        fp = Path(source)
        if not fp.exists():
            raise FileNotFoundError(f"{name}: no such file")
        if fp.is_dir():
            raise NotAnImageError(f"{name}: is a folder, not an image")
        if fp.stat().st_size == 0:
            raise NotAnImageError(f"{name}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                factor = _fit(im, name, max_pixels, shrink)
                if getattr(im, "is_animated", False):
                    im.seek(0)
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im, name), factor
    except (NotAnImageError, ImageTooLargeError, ImageDecodeError):
        raise
    except UnidentifiedImageError:
        raise NotAnImageError(f"{name}: not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"{name}: image too large, refused as a possible decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        text = str(e) or type(e).__name__
        if "truncated" in text:
            text = "truncated or corrupt image data"
        raise ImageDecodeError(f"{name}: cannot decode image: {text}") from None


def _fit(im: Image.Image, name: str, max_pixels: int, shrink: bool) -> int:
    """Refuse ``im`` from its header if it has too many pixels, or set a JPEG to decode reduced; the factor."""
    w, h = im.size
    if w * h <= max_pixels:
        return 1
    if shrink and im.format == "JPEG" and w * h <= MAX_SHRINK_PIXELS:
        for s in _JPEG_SCALES:
            if -(-w // s) * -(-h // s) <= max_pixels:
                im.draft("RGB", (w // s, h // s))
                if im.size[0] * im.size[1] <= max_pixels:
                    return round(w / im.size[0])
                break
    raise ImageTooLargeError(
        f"{name}: image too large ({w}x{h} = {w * h / 1e6:.0f} Mpx, limit {max_pixels / 1e6:.0f} Mpx)"
    )


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    """Convert any Pillow mode to ``(H, W, 3) uint8`` RGB."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if mode in ("RGBA", "LA", "PA") or im.mode == "RGBA":
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    try:
        rgb = im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageDecodeError(f"{name}: unsupported pixel format {mode!r}: {e}") from None
    a = np.asarray(rgb, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageDecodeError(f"{name}: unsupported image shape {a.shape}")
    return np.ascontiguousarray(a)
