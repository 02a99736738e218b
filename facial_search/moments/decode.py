"""Video files in, by PyAV (FFmpeg): what a file is (:func:`probe`), its frames every so often
(:func:`sample_frames`, streamed: one decoded frame in memory at a time), one frame at a time (:func:`frame_at`).

Times are the stream's presentation timestamps in seconds from its first frame (variable frame rate
included), never frame number / nominal rate. Frames come upright: a rotation in the container's display
matrix (a phone's portrait video) is applied (``VideoFrame.rotation``, counter-clockwise degrees), as FFmpeg's
player and OpenCV do. Frames larger than ``max_side`` (a 4K video) are scaled down by FFmpeg's swscale while
converting to RGB, before NumPy sees them; :class:`SampledFrame` says by how much.

Errors are typed (:class:`VideoError` and subclasses, which are :class:`~facial_search.errors.ImageError` s, so
a folder run records the file as skipped with their :attr:`skip_reason` and goes on).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facial_search.errors import ImageDecodeError, InputNotFoundError, NotAnImageError

#: File name suffixes indexed as videos. An animated ``.gif`` (more than one frame) is a video too
#: (:func:`is_video`), a still one an image.
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})

#: Largest side, pixels, of the frames handed to the landmarker: a 4K frame is scaled to 1280 px (BlazeFace
#: sees 128x128 anyway; the embedder's 48x48 crop loses nothing), which keeps RGB conversion and MediaPipe's
#: copy of it cheap. Boxes are given in the upright full-size frame.
MAX_SIDE = 1280


class VideoError(ImageDecodeError):
    """A video file that cannot be used: no video stream, no frame decodes, corrupt data."""


class NoVideoStreamError(VideoError, NotAnImageError):
    """A file with no video stream (audio only, or not a media file at all)."""

    skip_reason = NotAnImageError.skip_reason


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` reads from a container's header (no frame decoded).

    Attributes:
        width, height: frame size as shown (rotation applied), pixels.
        duration: seconds (the container's estimate; 0.0 when it does not say).
        fps: average frame rate, frames/s (0.0 when unknown).
        rotation: counter-clockwise degrees applied to decoded frames (0, 90, 180, 270).
        codec: FFmpeg's decoder name.
    """

    width: int
    height: int
    duration: float
    fps: float
    rotation: int
    codec: str


@dataclass
class SampledFrame:
    """One sampled frame: ``t`` (seconds from the first frame), ``rgb`` ``(H, W, 3) uint8`` upright and at most
    ``max_side`` pixels a side, ``scale`` (full-size pixels per pixel of ``rgb``, >= 1), ``index`` (the
    frame's number among all decoded frames)."""

    t: float
    rgb: np.ndarray
    scale: float
    index: int


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` is indexed as a video: a :data:`VIDEO_SUFFIXES` suffix, or a GIF with more than one
    frame (read from its header by Pillow; an unreadable GIF counts as a still image, whose decode reports it)."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return True
    if suffix != ".gif":
        return False
    from PIL import Image

    try:
        with Image.open(path) as im:
            return bool(getattr(im, "is_animated", False))
    except Exception:
        return False


def _open(path: str | os.PathLike):
    import av

    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"{p}: no such file")
    if p.is_dir():
        raise NotAnImageError(f"{p}: is a folder, not a video")
    if p.stat().st_size == 0:
        raise NotAnImageError(f"{p}: empty file")
    try:
        container = av.open(str(p))
    except av.error.FFmpegError as e:
        raise VideoError(f"{p}: cannot be read as a video ({_why(e)})") from None
    if not container.streams.video:
        container.close()
        raise NoVideoStreamError(f"{p}: no video stream (audio only, or not a video)")
    return container


def _why(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _rotation(stream, frame=None) -> int:
    """Counter-clockwise degrees (a multiple of 90) of the display matrix, from a decoded frame."""
    r = getattr(frame, "rotation", 0) if frame is not None else 0
    return int(round((r or 0) / 90)) % 4 * 90


def probe(path: str | os.PathLike) -> VideoInfo:
    """The header facts of the video ``path`` (:class:`VideoInfo`); decodes its first frame for the rotation.

    Raises:
        InputNotFoundError: no such file. NotAnImageError: a folder, an empty file.
        NoVideoStreamError: no video stream. VideoError: not readable as a video, or no frame decodes.
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
        if not duration and container.duration:
            duration = container.duration / 1_000_000
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        first = next(_frames(container, stream, path), None)
        if first is None:
            raise VideoError(f"{path}: no frame could be decoded")
        rot = _rotation(stream, first)
        w, h = (first.height, first.width) if rot in (90, 270) else (first.width, first.height)
        return VideoInfo(w, h, duration, fps, rot, stream.codec_context.name)
    finally:
        container.close()


#: Packets in a row that may fail to decode (a damaged stretch of a file) before the video is taken to end there.
MAX_BAD_PACKETS = 200


def _frames(container, stream, path):
    """Decoded frames of ``stream``, packet by packet: a packet that does not decode (damaged data) is passed
    over, up to :data:`MAX_BAD_PACKETS` in a row; a demuxing error (a truncated file) ends the video there.
    Raises :class:`VideoError` when that happens before any frame."""
    import av

    got = bad = 0
    why = "no frame"
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except (av.error.FFmpegError, ValueError) as e:  # ValueError: PyAV's InvalidDataError variants
                bad, why = bad + 1, _why(e)
                if bad > MAX_BAD_PACKETS:
                    break
                continue
            bad = 0
            for frame in frames:
                got += 1
                yield frame
    except (av.error.FFmpegError, ValueError) as e:
        why = _why(e)
    if not got:
        raise VideoError(f"{path}: no frame could be decoded ({why})")


def _rgb(frame, rot: int, max_side: int) -> tuple[np.ndarray, float]:
    """``frame`` as upright ``(H, W, 3) uint8`` RGB of at most ``max_side`` a side, and the scale factor."""
    side = max(frame.width, frame.height)
    scale = max(1.0, side / max_side) if max_side else 1.0
    if scale > 1.0:
        w, h = max(2, round(frame.width / scale)), max(2, round(frame.height / scale))
        rgb = frame.to_ndarray(format="rgb24", width=w, height=h)
        scale = frame.width / w
    else:
        rgb = frame.to_ndarray(format="rgb24")
    if rot:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rot // 90))
    return rgb, scale


def sample_frames(path: str | os.PathLike, every_s: float, max_side: int = MAX_SIDE) -> Iterator[SampledFrame]:
    """The frames of ``path`` nearest every ``every_s`` seconds (the first frame at or after 0, every_s,
    2 every_s, ...; a gap in a variable-frame-rate video gives one frame for the slots it skips), upright,
    scaled to ``max_side`` (0: full size). Streams: one frame decoded and converted at a time; only the
    sampled frames are converted to RGB. Decoding runs on FFmpeg's frame threads.

    Raises:
        InputNotFoundError, NotAnImageError, NoVideoStreamError, VideoError: as :func:`probe`; a file that
            stops decoding midway (truncated, corrupt) ends its frames there instead.
    """
    if not every_s > 0:
        raise ValueError(f"every_s must be > 0 (got {every_s!r})")
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start = None
        next_t = 0.0
        for i, frame in enumerate(_frames(container, stream, path)):
            if frame.pts is None:
                continue
            t = float(frame.pts * stream.time_base)
            if start is None:
                start = t
            t -= start
            if t + 1e-6 < next_t:
                continue
            rgb, scale = _rgb(frame, _rotation(stream, frame), max_side)
            yield SampledFrame(t, rgb, scale, i)
            next_t = (np.floor(t / every_s + 1e-6) + 1) * every_s
    finally:
        container.close()


def frame_at(path: str | os.PathLike, t: float, max_side: int = 0) -> np.ndarray:
    """The upright ``(H, W, 3) uint8`` RGB frame of ``path`` shown at ``t`` seconds (from the first frame):
    the last frame whose time is at most ``t`` (the first frame for ``t`` before it, the last for ``t`` past
    the end). Seeks to the keyframe before ``t``, then decodes forward.

    Raises:
        InputNotFoundError, NotAnImageError, NoVideoStreamError, VideoError: as :func:`probe`.
    """
    import av

    container = _open(path)
    try:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        target = start + int(max(0.0, t) / stream.time_base) if stream.time_base else start
        try:
            container.seek(int(target), stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            container.seek(0)
        chosen = None
        for frame in _frames(container, stream, path):
            if chosen is not None and frame.pts is not None and frame.pts > target:
                break
            chosen = frame
        if chosen is None:
            raise VideoError(f"{path}: no frame could be decoded at {t:.3f} s")
        return _rgb(chosen, _rotation(stream, chosen), max_side)[0]
    finally:
        container.close()


def format_time(t: float) -> str:
    """``63.25`` -> ``"1:03.2"`` (minutes:seconds.tenths; hours as ``h:mm:ss.t``)."""
    tenths = int(round(max(0.0, t) * 10))
    s, d = divmod(tenths, 10)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}.{d}" if h else f"{m}:{s:02d}.{d}"


def format_span(t_start: float, t_end: float) -> str:
    """``(3.2, 5.0)`` -> ``"0:03.2-0:05.0"``."""
    return f"{format_time(t_start)}-{format_time(t_end)}"
