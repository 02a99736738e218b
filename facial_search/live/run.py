"""Running a live session over a whole stream: ``facial-search live`` as a library call.

    FrameSource (camera / video, decoded in a thread) ──LiveSession──▶ FrameResult per frame
        ──annotate──▶ window (:class:`LiveWindow`)
                    / annotated video (:class:`~facial_search.io.video.VideoSink`, encoded in a thread)
                    / JSON lines (``--log``)

:func:`run_live` takes a :class:`LiveOptions` (what ``facial-search live`` parses its arguments into) and returns
:class:`LiveStats`; :func:`run_stream` runs an open source and session; :func:`live_frames` is the bare generator.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from facial_search.errors import LiveError, OptionError, OutputError
from facial_search.io.outputs import check_output_file
from facial_search.io.video import FrameSource, VideoFrame, VideoSink, check_video_output
from facial_search.live.overlay import ThumbnailCache
from facial_search.live.session import FrameResult, LiveConfig, LiveSession, annotate


@dataclass
class LiveOptions:
    """One run of :func:`run_live` (``facial-search live``).

    Attributes:
        index: the index to match against: any store URI (a ``.fsindex`` path, ``file://``,
            ``milvus-lite://``, ``milvus://``; :func:`facial_search.index.open`).
        video: a video file to read; ``None``: a camera.
        camera: the camera number when there is no ``video`` (``None``: camera 0).
        output: write the annotated video here (``.mp4``/``.m4v``/``.mov``/``.avi``; same size, frame count and
            rate as the input); ``None``: no video.
        log: write one JSON line per frame here (:meth:`~facial_search.live.session.FrameResult.to_json`).
        window: show the annotated frames in a desktop window (any key or closing it stops the run).
        mirror: flip the picture left to right; ``None``: on for a camera (a selfie view), off for a video.
        embedder: the expression embedder (``None``: the index's).
        session: the :class:`~facial_search.live.session.LiveConfig` (k, One Euro filter, hysteresis,
            ``embed_every``, ``group_by_source``, ``model_path`` ...).

    Raises:
        OptionError: both ``video`` and ``camera``, or a negative camera number.
    """

    index: str | os.PathLike
    video: str | os.PathLike | None = None
    camera: int | None = None
    output: str | os.PathLike | None = None
    log: str | os.PathLike | None = None
    window: bool = True
    mirror: bool | None = None
    embedder: str | None = None
    session: LiveConfig = field(default_factory=LiveConfig)

    def __post_init__(self):
        if self.video is not None and self.camera is not None:
            raise OptionError("a camera and a video: give one of them")
        if self.camera is not None and not (isinstance(self.camera, int | np.integer) and self.camera >= 0):
            raise OptionError(f"camera = {self.camera!r}: must be a camera number, at least 0")


@dataclass
class LiveStats:
    """Totals of one :func:`run_stream` run.

    Attributes:
        source: the video's path or the camera number.
        frames: frames processed (fewer than the video's when a key press stopped it).
        frames_with_faces: frames in which at least one face was tracked.
        seconds: wall-clock time of the run, seconds.
        stages: seconds spent per stage: ``landmarks``, ``track``, ``embed``, ``search`` (the session's timers),
            ``overlay``, ``write_log``, and ``decode``/``encode`` (in background threads).
        stopped: whether a key press (or closing the window) ended the run before the stream's end.
    """

    source: str = ""
    frames: int = 0
    frames_with_faces: int = 0
    seconds: float = 0.0
    stages: dict = field(default_factory=dict)
    stopped: bool = False

    @property
    def fps(self) -> float:
        """Frames processed per second of wall-clock time."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class FpsMeter:
    """Processing frame rate (frames/s) over the last ``window`` frames (wall clock: it measures us, not the
    video)."""

    def __init__(self, window: int = 30):
        self._times: deque = deque(maxlen=window + 1)

    def tick(self) -> float:
        """Count one frame; returns the rate so far (0 before the second frame)."""
        self._times.append(time.perf_counter())
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(1e-9, self._times[-1] - self._times[0])


def has_display() -> bool:
    """Whether a desktop window can be opened: Windows, macOS, or ``$DISPLAY`` (X11) / ``$WAYLAND_DISPLAY``."""
    return sys.platform in ("win32", "darwin") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class LiveWindow:
    """The desktop window of a run (OpenCV HighGUI: Qt or GTK, whichever OpenCV was built with).

    Args:
        title: the window title.
        pace: show frames at their timestamps (a video file plays at its own pace) rather than as fast as
            they come (a camera).

    :meth:`show` returns ``False`` once a key was pressed in the window or the window was closed.
    """

    def __init__(self, title: str, pace: bool):
        self.title, self.pace = title, pace
        self._start: float | None = None
        cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)  # the picture alone, no toolbar

    def show(self, bgr: np.ndarray, t: float) -> bool:
        """Show ``bgr`` (``(H, W, 3) uint8``) at time ``t`` (seconds from the stream's start); ``False``: stop."""
        now = time.perf_counter()
        if self._start is None:
            self._start = now - t
        cv2.imshow(self.title, bgr)
        wait = max(1, int((t - (now - self._start)) * 1000)) if self.pace else 1
        if cv2.waitKey(wait) != -1:
            return False
        return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        cv2.destroyWindow(self.title)
        cv2.waitKey(1)


def live_frames(source: FrameSource, session: LiveSession) -> Iterator[tuple[VideoFrame, FrameResult]]:
    """Every frame of ``source`` with what ``session`` found in it, in order (a generator)."""
    for frame in source:
        yield frame, session.process(frame.rgb, frame.t, frame.index)


def run_stream(
    source: FrameSource,
    session: LiveSession,
    *,
    output: str | os.PathLike | None = None,
    log: str | os.PathLike | None = None,
    window: bool = False,
    draw: bool | None = None,
) -> LiveStats:
    """Run ``session`` over ``source`` to the end (or a key press in the window): draw, show, write, log.

    Args:
        output: annotated video path (same size, frame count and rate as the input).
        log: JSON-lines path, one line per frame (:meth:`FrameResult.to_json`).
        window: show a :class:`LiveWindow`; any key (or closing it) stops. Video files play at their own pace.
        draw: annotate frames (default: when there is a window or an output).

    Returns:
        :class:`LiveStats` with per-stage seconds (``decode`` and ``encode`` run in background threads).

    Raises:
        OutputError: ``output`` or ``log`` cannot be written.
    """
    draw = (window or output is not None) if draw is None else draw
    thumbs = ThumbnailCache(session.search.index) if draw else None
    sink = VideoSink(output, source.fps, source.size) if output else None
    try:
        log_file = open(log, "w", encoding="utf-8") if log else None  # noqa: SIM115 - closed in finally
    except OSError as e:
        if sink is not None:
            sink.close()
        raise OutputError(f"{log}: cannot be written ({e.strerror or e})") from None
    shown = None
    if window:
        shown = LiveWindow(f"facial-search live: {source.name} (any key quits)", pace=not source.is_camera)
    stats, meter, overlay_s, log_s = LiveStats(source=source.name), FpsMeter(), 0.0, 0.0
    start = time.perf_counter()
    try:
        for frame, result in live_frames(source, session):
            stats.frames += 1
            stats.frames_with_faces += bool(result.faces)
            fps = meter.tick()
            t0 = time.perf_counter()
            if draw:
                annotate(frame.bgr, result, thumbs, fps)
            t1 = time.perf_counter()
            overlay_s += t1 - t0
            if sink is not None:
                sink.write(frame.bgr)
            if log_file is not None:
                log_file.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
            log_s += time.perf_counter() - t1
            if shown is not None and not shown.show(frame.bgr, frame.t):
                stats.stopped = True
                break
    finally:
        stats.seconds = time.perf_counter() - start
        if log_file is not None:
            log_file.close()
        if sink is not None:
            sink.close()
        if shown is not None:
            shown.close()
    stats.stages = dict(session.timers, overlay=overlay_s, write_log=log_s, decode=source.decode_seconds)
    if sink is not None:
        stats.stages["encode"] = sink.encode_seconds
    return stats


def run_live(options: LiveOptions) -> LiveStats:
    """``facial-search live`` as a library call: open the index and the source, run to the end (or a key press).

    What can be checked is checked before the model loads: the display, the output and log paths.

    Returns:
        :class:`LiveStats`.

    Raises:
        LiveError: no camera, an unreadable video, no display for the window.
        OutputError: ``output`` or ``log`` cannot be written (unknown extension, missing or read-only folder).
        InputNotFoundError: the video file does not exist.
        FileNotFoundError, IndexFormatError, EmbedderMismatchError, IndexURIError, AssetError: from opening
            the index (:meth:`FacialSearch.open <facial_search.pipeline.FacialSearch.open>`).
    """
    from facial_search.pipeline import FacialSearch

    o = options
    if o.window and not has_display():
        raise LiveError("no display for the window: run with --no-window (and --output / --log)")
    if o.output is not None:
        check_video_output(o.output)
    if o.log is not None:
        check_output_file(o.log)
    if o.video is not None:
        source = FrameSource.video(o.video, mirror=bool(o.mirror))
    else:
        cam = 0 if o.camera is None else o.camera
        source = FrameSource.camera(cam, mirror=True if o.mirror is None else o.mirror)
    with source, FacialSearch.open(o.index, embedder=o.embedder, model_path=o.session.model_path) as fs:
        with LiveSession(fs, o.session) as session:
            return run_stream(source, session, output=o.output, log=o.log, window=o.window)
