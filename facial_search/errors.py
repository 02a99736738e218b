"""Exceptions raised by facial-search.

Every error a user can cause derives from :class:`FacialSearchError`, so the command line can print it as one
line (no traceback) and a folder run can report and skip the file it came from.
"""

from __future__ import annotations


class FacialSearchError(Exception):
    """Base class of every error facial-search raises on bad input or a missing asset."""


class ImageError(FacialSearchError, ValueError):
    """A file or byte string that cannot be decoded as an image: empty, not an image, truncated, too large
    (decompression bomb) or of an unsupported pixel format."""


class NoFaceError(FacialSearchError):
    """An image in which the face landmarker found no face."""


class AssetError(FacialSearchError):
    """A model file that is missing, cannot be downloaded, or fails its pinned sha256 check."""


class IndexFormatError(FacialSearchError):
    """An index file that is unreadable, corrupt, or of a format version this release does not read."""


class EmbedderMismatchError(FacialSearchError):
    """An index built by another embedder (name, version or dimension) than the one in use."""


class LiveError(FacialSearchError):
    """A camera that cannot be opened, a video that cannot be read, an output that cannot be written."""
