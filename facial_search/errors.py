"""Exceptions raised by facial-search, one class per kind of mistake a user can make, and skip reasons.

Every error a user can cause derives from :class:`FacialSearchError`. What follows from an error follows from
its **type**, never from its message text:

- the command line prints ``facial-search: error: <message>`` (one line, no traceback) and exits with status 1;
- a folder run records the file as skipped with :attr:`ImageError.skip_reason` (:class:`SkipReason`) and goes on;
- the web app answers with the HTTP status mapped from the class (``facial_search.web``).

Messages start with the file they are about where there is one: ``<file>: <problem>``.
"""

from __future__ import annotations

from enum import StrEnum


class SkipReason(StrEnum):
    """Why a file given to ``index`` was recorded without faces (the index's skip report, ``info``)."""

    NO_FACE = "no face"
    """The face landmarker found no face (not an error: most folders hold some)."""
    NOT_AN_IMAGE = "not an image"
    """The bytes are no image format Pillow knows (a text file, a PDF, a video...)."""
    TOO_LARGE = "image too large"
    """More pixels than the decoder allows (a decompression bomb, or a huge scan)."""
    UNREADABLE = "unreadable"
    """An image that cannot be decoded: truncated, corrupt, or of an unsupported pixel format."""
    IO_ERROR = "cannot read file"
    """The file system refused the read (permissions, a file gone while indexing, an I/O error)."""

    @classmethod
    def parse(cls, recorded: str) -> SkipReason | None:
        """The reason of a skip as an index records it (``"unreadable: truncated JPEG"``), ``None`` if unknown."""
        head = recorded.split(":", 1)[0].strip()
        try:
            return cls(head)
        except ValueError:
            return None


class FacialSearchError(Exception):
    """Base class of every error facial-search raises on bad input, a bad option or a missing asset."""


# -- images ---------------------------------------------------------------------------------------------
class ImageError(FacialSearchError, ValueError):
    """A file or byte string that cannot be used as an image (base class of the three kinds below)."""

    skip_reason: SkipReason = SkipReason.UNREADABLE


class NotAnImageError(ImageError):
    """Empty data, or bytes that are no image format at all (web: 415)."""

    skip_reason = SkipReason.NOT_AN_IMAGE


class ImageTooLargeError(ImageError):
    """An image with more pixels than allowed (decompression bomb; web uploads have a lower bound)."""

    skip_reason = SkipReason.TOO_LARGE


class ImageDecodeError(ImageError):
    """An image that is truncated, corrupt, or of an unsupported pixel format (web: 422)."""

    skip_reason = SkipReason.UNREADABLE


class NoFaceError(FacialSearchError):
    """An image in which the face landmarker found no face."""

    skip_reason = SkipReason.NO_FACE


# -- models and dependencies --------------------------------------------------------------------------------
class AssetError(FacialSearchError):
    """A model file that is missing, cannot be downloaded, or fails its pinned sha256 check."""


class ModelLoadError(AssetError):
    """A model file that exists but cannot be loaded (not a MediaPipe ``.task`` bundle or ONNX graph, truncated)."""


class UnknownEmbedderError(FacialSearchError, ValueError):
    """An embedder name that is not registered (``--embedder``)."""


class MissingDependencyError(FacialSearchError, ImportError):
    """An optional dependency is not installed; the message names the extra to install
    (``pip install 'facial-search[web]'``)."""


class WorkerStartError(FacialSearchError):
    """A worker process could not build its pipeline (bad model, bad embedder): the run stops at once."""


# -- the index --------------------------------------------------------------------------------------------
class IndexFormatError(FacialSearchError):
    """An index file that is unreadable, not an index, or damaged inside (members of the wrong type or shape,
    missing keys, ids that do not match entries, NaN vectors)."""


class IndexVersionError(IndexFormatError):
    """An index file of a format version this release does not read (written by a newer release)."""


class IndexLockedError(FacialSearchError):
    """Another process is writing the same index file (two ``index`` runs into one ``--out``)."""


class EmbedderMismatchError(FacialSearchError):
    """An index built by another embedder (name, version or dimension) than the one in use."""


class IndexURIError(FacialSearchError, ValueError):
    """An index URI of a scheme no backend knows (``--index s3://...``; known: a path, ``file://``,
    ``milvus-lite://``, ``milvus://``)."""


class IndexBackendError(FacialSearchError):
    """An index server that cannot be reached or fails (``milvus://HOST:PORT``: down, wrong port, refused)."""


# -- other files a user points at ----------------------------------------------------------------------------
class InputNotFoundError(FacialSearchError, FileNotFoundError):
    """An input file or folder that does not exist."""


class CsvFileError(FacialSearchError, ValueError):
    """A CSV file that is empty, binary, not UTF-8, or lacks the columns it needs (base class)."""


class TitlesFileError(CsvFileError):
    """A bad titles CSV (``--titles``: columns ``file,title``)."""


class TripletFileError(CsvFileError):
    """A bad triplet CSV (``eval``: ``image_a, image_b, image_c, most_similar[, type]``)."""


class OutputError(FacialSearchError):
    """An output path that cannot be written (read-only or full file system, missing folder) or has an
    extension no writer knows."""


class OptionError(FacialSearchError, ValueError):
    """An option value out of its range (``-k 0``, ``--workers 0``, ``--port 70000``)."""


# -- live and serve ----------------------------------------------------------------------------------------
class LiveError(FacialSearchError):
    """A camera that cannot be opened, a video that cannot be read, an output that cannot be written."""


class ServeError(FacialSearchError):
    """The web server cannot start: the port is in use or not allowed, a certificate or key is missing or bad."""


class IndexExportError(FacialSearchError):
    """An index the web app cannot hand to the page's private mode: a backend that gives out no embeddings, or
    more faces than a phone should hold (web: 501)."""


# -- clips of video moments (facial-search clip) -----------------------------------------------------------
class ClipError(FacialSearchError):
    """A video moment that cannot be cut as a clip (base class of the kinds below; a missing source file is an
    :class:`InputNotFoundError`, an output path that cannot be written or has an unknown extension an
    :class:`OutputError`)."""


class ClipSourceError(ClipError):
    """A clip's source that is no readable video: not a video at all, no video stream, or no frame decodes."""


class ClipRangeError(ClipError, ValueError):
    """A clip's time range outside its video (a start below 0 or past the end, an end not after the start)."""


class ClipTooLargeError(ClipError):
    """A clip that does not fit its byte budget (``max_bytes``) even at the lowest frame rate and width tried."""


class NotAMomentError(ClipError, ValueError):
    """An index entry that is a picture, not a video moment (it has no ``t_start`` / ``t_end``)."""


class UnknownIdError(FacialSearchError, LookupError):
    """An id that is not in the index (``facial-search clip INDEX ID``)."""
