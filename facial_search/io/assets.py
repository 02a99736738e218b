"""Locate, download and verify the files facial-search fetches at run time (models, the demo's memes).

The MediaPipe FaceLandmarker bundle is looked for in this order:

1. an explicit path given by the caller (``--model`` on the command line);
2. ``$FACIAL_SEARCH_MODELS/face_landmarker.task``;
3. the user cache, :func:`cache_dir` (``$FACIAL_SEARCH_CACHE``, else the OS's user cache folder by
   ``platformdirs``: ``~/.cache/facial-search`` on Linux, honouring ``$XDG_CACHE_HOME``;
   ``~/Library/Caches/facial-search`` on macOS; ``%LOCALAPPDATA%\\facial-search\\Cache`` on Windows);
   a cached file is checked against its pinned sha256;
4. else it is downloaded from Google's official URL into the user cache.

Every download goes through :func:`fetch` (``pooch``): streamed into a temporary file in the destination
folder, checked against the pinned sha256, and only then moved to its name, so a failed or tampered download
never takes the final name and leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from facial_search.errors import AssetError


@dataclass(frozen=True)
class Asset:
    """A file fetched at run time: its file name, official URL and pinned sha256 (64 hex digits)."""

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

#: A folder holding the model files (step 2 of the lookup).
ENV_MODELS = "FACIAL_SEARCH_MODELS"
#: Overrides the user cache folder (tests, read-only homes, shared caches).
ENV_CACHE = "FACIAL_SEARCH_CACHE"


def cache_dir() -> Path:
    """The user cache folder: ``$FACIAL_SEARCH_CACHE`` if set, else ``platformdirs.user_cache_dir("facial-search")``
    (on Linux ``$XDG_CACHE_HOME/facial-search``, default ``~/.cache/facial-search``). Not created here."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("facial-search", appauthor=False))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 (64 digits) of a file."""
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


def find_asset(asset: Asset = FACE_LANDMARKER, path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Return the path of ``asset``, downloading it into the user cache if it is nowhere else.

    Args:
        asset: which file.
        path: an explicit file path; when given it must exist (it is not checksummed: it may be a custom model).
        download: allow the network fetch of step 4 (also the repair of a cached copy that fails its sha256).

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
    if cached.is_file() and sha256_file(cached) == asset.sha256:
        return cached
    if not download:
        why = "the cached copy fails its sha256 check and " if cached.is_file() else ""
        raise AssetError(_missing_message(asset, cached, f"{why}downloads are disabled"))
    return download_asset(asset, cached)


def download_asset(asset: Asset, dest: str | os.PathLike, *, url: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``asset`` (from ``url``, default its official URL) to ``dest``, sha256-checked, atomically.

    A file already at ``dest`` with the pinned sha256 is kept (no download); one with another is replaced.

    Args:
        timeout: seconds to wait for the server (connecting, and between bytes).

    Raises:
        AssetError: network failure, HTTP error, or checksum mismatch (nothing new is left at ``dest`` or in its
            folder); the one-line message says where to put the file by hand, with its URL and sha256.
    """
    dest, url = Path(dest), url or asset.url
    try:
        return fetch(url, asset.sha256, dest, timeout=timeout)
    except AssetError as e:
        problem = str(e).removeprefix(f"{url}: ") if url == asset.url else str(e)  # the message names the URL
        raise AssetError(_missing_message(asset, dest, f"its download failed ({problem})")) from None


def fetch(url: str, sha256: str, dest: str | os.PathLike, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already holds the file with this ``sha256`` (hex).

    The one download code path (``pooch.retrieve``): the bytes stream into a temporary file in ``dest``'s folder
    (created if missing), which takes ``dest``'s name only once its sha256 matches; on any failure it is deleted.
    Thread-safe for distinct ``dest``.

    Raises:
        AssetError: ``"<url>: <problem>"``, one line: the server cannot be reached, answers an HTTP error or is
            too slow (``timeout`` seconds), the bytes do not match ``sha256``, or ``dest`` cannot be written.
    """
    import pooch
    import requests

    dest = Path(dest)
    try:
        with _quiet_pooch():
            pooch.retrieve(
                url,
                known_hash=f"sha256:{sha256}",
                fname=dest.name,
                path=dest.parent,
                downloader=pooch.HTTPDownloader(timeout=timeout),
            )
    except ValueError as e:  # pooch: the hash does not match (or a URL it cannot use)
        if "hash" in str(e).lower():
            raise AssetError(f"{url}: sha256 mismatch (expected {sha256}); the download was discarded") from None
        raise AssetError(f"{url}: {_one_line(e)}") from None
    except requests.RequestException as e:
        raise AssetError(f"{url}: {_reason(e)}") from None
    except OSError as e:
        raise AssetError(f"{url}: cannot write {dest}: {e.strerror or e}") from None
    return dest


@contextmanager
def _quiet_pooch() -> Iterator[None]:
    """pooch logs every download at INFO on stderr; callers report downloads themselves."""
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _reason(e: Exception) -> str:
    """A short reason for a ``requests`` failure: ``HTTP 404 Not Found``, ``[Errno 111] Connection refused``."""
    import requests

    if isinstance(e, requests.HTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code} {e.response.reason}"
    if isinstance(e, requests.Timeout):
        return "timed out"
    m = re.search(r"\[Errno -?\d+\][^'\")]*", str(e))
    return m.group(0).strip() if m else _one_line(e)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _missing_message(asset: Asset, cached: Path, why: str) -> str:
    return (
        f"{asset.filename} not found and {why}. Download it from {asset.url} (sha256 {asset.sha256}) "
        f"and put it at {cached}, or in a folder named by ${ENV_MODELS}, or pass its path with --model"
    )
