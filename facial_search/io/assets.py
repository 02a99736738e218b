"""Locate, download and verify the model files facial-search needs.

The MediaPipe FaceLandmarker bundle is looked for in this order:

1. an explicit path given by the caller (``--model`` on the command line);
2. ``$FACIAL_SEARCH_MODELS/face_landmarker.task``;
3. the user cache, ``$XDG_CACHE_HOME/facial-search`` (default ``~/.cache/facial-search``);
4. else it is downloaded from Google's official URL into the user cache, checked against the pinned sha256
   and written atomically (a partial download never takes the final name).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from facial_search.errors import AssetError


@dataclass(frozen=True)
class Asset:
    """A file fetched at run time: its file name, official URL and pinned sha256 (hex)."""

    filename: str
    url: str
    sha256: str


#: MediaPipe FaceLandmarker bundle, float16, version 1 (Apache-2.0, Google): BlazeFace short-range detector,
#: 478-point face landmarks, 52 blendshapes. Model card: https://ai.google.dev/edge/mediapipe/solutions/vision/face_landmarker
FACE_LANDMARKER = Asset(
    filename="face_landmarker.task",
    url="https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task",
    sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
)

ENV_MODELS = "FACIAL_SEARCH_MODELS"


def cache_dir() -> Path:
    """The user cache folder: ``$XDG_CACHE_HOME/facial-search``, default ``~/.cache/facial-search``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "facial-search"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_asset(asset: Asset = FACE_LANDMARKER, path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Return the path of ``asset``, downloading it into the user cache if it is nowhere else.

    Args:
        asset: which file.
        path: an explicit file path; when given it must exist (it is not checksummed: it may be a custom model).
        download: allow the network fetch of step 4.

    Raises:
        AssetError: the explicit path does not exist, or the file is found nowhere and cannot be downloaded,
            or the download does not match the pinned sha256. The message says where to put the file.
    """
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise AssetError(f"{p}: model file not found")
        return p
    env = os.environ.get(ENV_MODELS)
    if env:
        p = Path(env) / asset.filename
        if p.is_file():
            return p
    cached = cache_dir() / asset.filename
    if cached.is_file():
        return cached
    if not download:
        raise AssetError(_missing_message(asset, cached, "downloads are disabled"))
    return download_asset(asset, cached)


def download_asset(asset: Asset, dest: str | os.PathLike, *, url: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``asset`` (from ``url``, default its official URL) to ``dest``, atomically, sha256-checked.

    Raises:
        AssetError: network failure, HTTP error, or checksum mismatch (nothing is left at ``dest``).
    """
    dest = Path(dest)
    url = url or asset.url
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    for block in iter(lambda: resp.read(1 << 20), b""):
                        h.update(block)
                        out.write(block)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                raise AssetError(_missing_message(asset, dest, f"download from {url} failed: {reason}")) from None
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != asset.sha256:
            raise AssetError(
                f"{url}: downloaded {asset.filename} has sha256 {h.hexdigest()}, expected {asset.sha256}; "
                "the file was discarded"
            )
        os.replace(tmp, dest)
        return dest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _missing_message(asset: Asset, cached: Path, why: str) -> str:
    return (
        f"{asset.filename} not found and {why}. Download it from {asset.url} (sha256 {asset.sha256}) "
        f"and put it at {cached}, or in a folder named by ${ENV_MODELS}, or pass its path with --model"
    )
