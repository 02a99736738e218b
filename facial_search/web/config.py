"""The web app's settings: :class:`ServeConfig` and the limits it defaults to (no FastAPI import here)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from facial_search.errors import OptionError

#: Largest request body accepted, bytes (10 MB); counted while the body streams in, whatever
#: ``Content-Length`` says. A bigger one gets 413.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Room for the multipart envelope (boundaries, part headers, the other fields) on top of the image itself.
ENVELOPE_BYTES = 64 * 1024
#: Most pixels of an uploaded image once decoded (16 Mpx: a 12 Mpx phone photo fits, 48 MB as RGB). A JPEG
#: up to 64 Mpx is decoded at 1/2..1/8 scale to fit; any other bigger image gets 413.
WEB_MAX_PIXELS = 16_000_000
#: Seconds a client has to send a request's whole body once its headers are in; then 408 and the
#: connection is closed (a client that stops half-way must not hold a connection forever).
BODY_TIMEOUT = 15.0
#: Most matches per face a client can ask for.
MAX_K = 10
#: Seconds a request waits for a free pipeline before it gets 503.
CHECKOUT_TIMEOUT = 30.0


@dataclass(frozen=True)
class ServeConfig:
    """What ``facial-search serve`` (:func:`facial_search.web.serve`) and :func:`facial_search.web.create_app`
    run with.

    Attributes:
        index: the meme index (``.fsindex``) to search.
        host: address to bind (default loopback only); ``port``: TCP port, 1-65535.
        workers: pipelines in the pool (MediaPipe landmarker + embedder each), default one per core.
        certfile, keyfile: PEM certificate and private key: serve HTTPS (phones allow the camera only there).
        embedder: expression embedder name (default: the index's); ``model_path``: ``face_landmarker.task``.
        body_timeout: seconds a request's body may take to arrive (408 after).
        max_upload_bytes: largest body, bytes (413 over); ``max_pixels``: most pixels of a decoded upload.
    """

    index: str | os.PathLike
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int | None = None
    certfile: str | os.PathLike | None = None
    keyfile: str | os.PathLike | None = None
    embedder: str | None = None
    model_path: str | os.PathLike | None = None
    body_timeout: float = BODY_TIMEOUT
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_pixels: int = WEB_MAX_PIXELS

    def validate(self) -> None:
        """Raise :class:`~facial_search.errors.OptionError` for a value out of its range."""
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise OptionError(f"--port {self.port}: a TCP port is 1 to 65535")
        if self.workers is not None and self.workers < 1:
            raise OptionError(f"--workers {self.workers}: must be at least 1")
        if not self.body_timeout > 0:
            raise OptionError(f"--body-timeout {self.body_timeout}: must be more than 0 seconds")
        if self.max_upload_bytes < 1 or self.max_pixels < 1:
            raise OptionError("max_upload_bytes and max_pixels must be at least 1")
        if self.keyfile and not self.certfile:
            raise OptionError(f"--keyfile {self.keyfile}: needs --certfile too")
