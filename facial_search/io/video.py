"""Video frames in and out: a camera or a video file decoded in a background thread (:class:`FrameSource`), and
annotated frames encoded to a file in another (:class:`VideoSink`).

Timestamps are the video's (``CAP_PROP_POS_MSEC``, else frame number / frame rate: :func:`next_timestamp`),
never the wall clock, except for a camera, whose frames are stamped with their capture time.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facial_search.errors import InputNotFoundError, LiveError, OutputError
from facial_search.io.outputs import check_output_file

# ---------------------------------------------------------------------------------------------------------
# Frames in
# ---------------------------------------------------------------------------------------------------------


@dataclass
class VideoFrame:
    """One input frame: ``index`` (0-based), ``t`` (seconds from the video's start), ``bgr`` and ``rgb``
    (``(H, W, 3) uint8``, mirrored already when mirroring is on)."""

    index: int
    t: float
    bgr: np.ndarray
    rgb: np.ndarray


def next_timestamp(pos_msec: float | None, index: int, fps: float, previous: float | None) -> float:
    """Timestamp in seconds of a decoded frame: the container's ``pos_msec`` (``CAP_PROP_POS_MSEC``,
    milliseconds) when it is valid and after ``previous`` (seconds), else ``previous + 1 / fps`` (or
    ``index / fps`` for the first frame; ``fps`` in frames/s, 30 when unknown). Strictly increasing, as
    MediaPipe's VIDEO mode requires."""
    step = 1.0 / fps if fps and fps > 0 else 1.0 / 30
    t = pos_msec / 1000.0 if pos_msec is not None and np.isfinite(pos_msec) and pos_msec >= 0 else None
    if previous is None:
        return t if t is not None else index * step
    if t is None or t <= previous:
        return previous + step
    return t


class FrameSource:
    """Frames of a camera or a video file, decoded (and converted to RGB) in a background thread.

    Use :meth:`video` or :meth:`camera`; iterate for :class:`VideoFrame` s; :meth:`close` when done (a
    context manager).

    Attributes:
        name: the video's path, or the camera number.
        fps: frame rate (the container's; 30 when a camera does not say), frames/s.
        size: ``(width, height)``, pixels.
        frame_count: the container's frame count (an estimate; 0 for a camera).
        is_camera: whether it is a live camera.
        mirror: whether frames are flipped left to right.
        decode_seconds: time spent decoding so far (in the background thread), seconds.

    Raises:
        LiveError: the camera cannot be opened or gives no frame; the video cannot be opened or has no
            frame that decodes.
        InputNotFoundError: the video file does not exist (a ``FileNotFoundError``).
    """

    def __init__(self, cap: cv2.VideoCapture, name: str, is_camera: bool, mirror: bool, prefetch: int = 4):
        self._cap, self.name, self.is_camera, self.mirror = cap, name, is_camera, mirror
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and 1 <= fps <= 1000 else 30.0
        self.frame_count = 0 if is_camera else max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        ok, first = cap.read()
        if not ok or first is None or first.size == 0:
            cap.release()
            what = f"camera {name} gives no picture" if is_camera else f"{name}: no frame could be decoded"
            raise LiveError(what)
        self.size = (first.shape[1], first.shape[0])
        self.decode_seconds = 0.0
        self._t0 = time.monotonic()
        self._first = first
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="facial-search-decode", daemon=True)
        self._thread.start()

    @classmethod
    def video(cls, path: str | os.PathLike, mirror: bool = False) -> FrameSource:
        """The frames of the video file ``path`` (any container and codec OpenCV's FFmpeg reads)."""
        p = Path(path)
        if not p.exists():
            raise InputNotFoundError(f"{p}: no such file")
        if p.is_dir():
            raise LiveError(f"{p}: is a folder, not a video")
        cap = cv2.VideoCapture(str(p))
        if not cap.isOpened():
            cap.release()
            raise LiveError(f"{p}: cannot be read as a video")
        return cls(cap, str(p), False, mirror)

    @classmethod
    def camera(cls, number: int = 0, mirror: bool = True) -> FrameSource:
        """The frames of camera ``number`` (OpenCV's device index: ``/dev/video<number>`` on Linux)."""
        cap = cv2.VideoCapture(int(number))
        if not cap.isOpened():
            cap.release()
            raise LiveError(f"camera {number} cannot be opened (is it connected, and free?)")
        return cls(cap, str(number), True, mirror, prefetch=2)

    def _stamp(self, index: int, previous: float | None) -> float:
        if self.is_camera:  # a live frame's time is its capture time
            t = time.monotonic() - self._t0
            return t if previous is None or t > previous else previous + 1e-3
        return next_timestamp(self._cap.get(cv2.CAP_PROP_POS_MSEC), index, self.fps, previous)

    def _prepare(self, index: int, bgr: np.ndarray, t: float) -> VideoFrame:
        if self.mirror:
            bgr = cv2.flip(bgr, 1)
        return VideoFrame(index, t, bgr, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    def _run(self) -> None:
        try:
            t = self._stamp(0, None)
            self._put(self._prepare(0, self._first, t))
            self._first = None
            index = 1
            while not self._stop.is_set():
                t0 = time.perf_counter()
                ok, bgr = self._cap.read()
                if not ok or bgr is None:
                    break
                t = self._stamp(index, t)
                frame = self._prepare(index, bgr, t)
                self.decode_seconds += time.perf_counter() - t0
                if not self._put(frame):
                    break
                index += 1
        except Exception as e:  # handed to the consumer
            self._put(e)
        finally:
            self._put(None)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[VideoFrame]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self) -> None:
        """Stop decoding and release the camera or file."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._cap.release()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------
# Frames out
# ---------------------------------------------------------------------------------------------------------

#: Video file extensions :class:`VideoSink` writes, and their codec (FourCC): MPEG-4 Part 2, Motion JPEG.
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}


def check_video_output(path: str | os.PathLike) -> Path:
    """Check, before any work, that a video can be written at ``path``: a known extension
    (:data:`VIDEO_CODECS`), in a folder where a file can be created
    (:func:`facial_search.io.outputs.check_output_file`). Returns the path.

    Raises:
        OutputError: what is wrong with it.
    """
    return check_output_file(path, suffixes=VIDEO_CODECS)


class VideoSink:
    """Writes frames to a video file in a background thread (same size and frame rate as the input).

    Args:
        path: the file; its extension picks the codec (:data:`VIDEO_CODECS`: ``.mp4``/``.m4v``/``.mov``
            MPEG-4 Part 2, ``.avi`` Motion JPEG).
        fps: frame rate, frames/s.
        size: ``(width, height)``, pixels; every frame written is ``(height, width, 3) uint8`` BGR.

    Attributes:
        frames: frames written so far.
        encode_seconds: time spent encoding (in the background thread), seconds.

    Raises:
        OutputError: an unknown extension, or the file cannot be opened for writing (or a write failed, at
            :meth:`close`).
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]):
        self.path = check_video_output(path)
        fourcc = VIDEO_CODECS[self.path.suffix.lower()]
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*fourcc), float(fps), tuple(size))
        if not self._writer.isOpened():
            raise OutputError(f"{self.path}: cannot write a video there")
        self.frames = 0
        self.encode_seconds = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="facial-search-encode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            if self._error is None:
                try:
                    t0 = time.perf_counter()
                    self._writer.write(frame)
                    self.encode_seconds += time.perf_counter() - t0
                    self.frames += 1
                except Exception as e:
                    self._error = e

    def write(self, bgr: np.ndarray) -> None:
        """Queue one ``(height, width, 3) uint8`` BGR frame (it must not be changed afterwards)."""
        self._queue.put(bgr)

    def close(self) -> None:
        """Write what is queued and close the file."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._writer.release()
        if self._error is not None:
            raise OutputError(f"{self.path}: writing the video failed: {self._error}")

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
