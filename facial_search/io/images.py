"""Decode any image a user may hand us into a 3-channel RGB array.

MediaPipe needs ``(H, W, 3) uint8`` RGB (a single-channel image fails inside its graph), so every image is
normalised here, at the edge: EXIF orientation applied, grey / palette / CMYK / 16-bit / float converted,
alpha composited on white, the first frame of an animation taken, and images above :data:`MAX_PIXELS`
refused before their pixels are decoded (decompression bombs).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facial_search.errors import ImageError

#: Largest image accepted, in pixels (width x height). 64 megapixels holds any camera photo; a 20000x20000
#: PNG (400 Mpx, 1.2 GB decoded) is refused from its header alone.
MAX_PIXELS = 64_000_000

#: File name suffixes picked up when a folder is indexed.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


def load_image(source: str | os.PathLike | bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file (or its bytes) to RGB.

    Args:
        source: a path, or the encoded bytes (an upload).
        max_pixels: refuse images with more pixels than this (decompression-bomb guard).

    Returns:
        ``(H, W, 3) uint8`` RGB array, EXIF rotation applied; first frame of an animated image.

    Raises:
        ImageError: empty file, not an image, truncated data, too many pixels, or an unsupported mode.
        FileNotFoundError: the path does not exist.
    """
    name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    if isinstance(source, bytes | bytearray):
        if not source:
            raise ImageError(f"{name}: empty data, not an image")
        fp: io.BytesIO | Path = io.BytesIO(source)
    else:
        fp = Path(source)
        if not fp.exists():
            raise FileNotFoundError(f"{name}: no such file")
        if fp.is_dir():
            raise ImageError(f"{name}: is a folder, not an image")
        if fp.stat().st_size == 0:
            raise ImageError(f"{name}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(
                        f"{name}: image too large ({w}x{h} = {w * h / 1e6:.0f} Mpx, limit {max_pixels / 1e6:.0f} Mpx)"
                    )
                if getattr(im, "is_animated", False):
                    im.seek(0)
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im, name)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        if isinstance(e, UnidentifiedImageError):
            msg = "not an image (unrecognised format)"
        else:
            msg = f"image too large, refused as a possible decompression bomb ({e})"
        raise ImageError(f"{name}: {msg}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        text = str(e) or type(e).__name__
        if "truncated" in text:
            text = "truncated or corrupt image data"
        raise ImageError(f"{name}: cannot decode image: {text}") from None


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
        raise ImageError(f"{name}: unsupported pixel format {mode!r}: {e}") from None
    a = np.asarray(rgb, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"{name}: unsupported image shape {a.shape}")
    return np.ascontiguousarray(a)
