"""Live meme matching on a webcam or a video file, with a smoothed face mesh.

    frames (camera / video, decoded in a thread) ──FaceLandmarker VIDEO mode──▶ faces
        ──Tracker (track ids, One Euro filter on 478 landmarks)──▶ tracks
        ──embedder (+ One Euro on each track's embedding) + exact distances to the index
        ──MatchHysteresis──▶ stable top-k per track
        ──overlay──▶ window / annotated video (encoded in a thread) / JSON lines

:class:`LiveSession` is the reusable core (one frame in, one :class:`FrameResult` out, no I/O);
:func:`live_frames` runs it over a :class:`FrameSource` as a generator; :func:`run_live` is the
``facial-search live`` command.

Timestamps are the video's (``CAP_PROP_POS_MSEC``, else frame number / frame rate), never the wall clock,
except for a camera, whose frames are stamped with their capture time.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from facial_search.errors import LiveError
from facial_search.index.store import group_min
from facial_search.live.one_euro import OneEuroFilter, OneEuroParams
from facial_search.live.overlay import ShownMatch, ThumbnailCache, draw_face, draw_fps
from facial_search.live.tracking import MatchHysteresis, Tracker
from facial_search.vision.faces import FaceFinder, FaceFinderOptions

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


def next_timestamp(pos_msec: float, index: int, fps: float, previous: float | None) -> float:
    """Timestamp in seconds of a decoded frame: the container's ``pos_msec`` (``CAP_PROP_POS_MSEC``) when it
    is valid and after ``previous``, else ``previous + 1 / fps`` (or ``index / fps`` for the first frame).
    Strictly increasing, as MediaPipe's VIDEO mode requires."""
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
        fps: frame rate (the container's; 30 when a camera does not say), frames/s.
        size: ``(width, height)``, pixels.
        frame_count: the container's frame count (an estimate; 0 for a camera).
        is_camera: whether it is a live camera.
        decode_seconds: time spent decoding so far (in the background thread).

    Raises:
        LiveError: the camera cannot be opened or gives no frame; the video cannot be opened or has no
            frame that decodes.
        FileNotFoundError: the video file does not exist.
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
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file")
        if p.is_dir():
            raise LiveError(f"{p}: is a folder, not a video")
        cap = cv2.VideoCapture(str(p))
        if not cap.isOpened():
            cap.release()
            raise LiveError(f"{p}: cannot be read as a video")
        return cls(cap, str(p), False, mirror)

    @classmethod
    def camera(cls, number: int = 0, mirror: bool = True) -> FrameSource:
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
        self._stop.set()
        self._thread.join(timeout=5)
        self._cap.release()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------
# The session: one frame in, tracked faces with stable matches out
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LiveConfig:
    """Settings of a :class:`LiveSession`.

    Attributes:
        k: matches per face.
        filter: One Euro parameters for the landmarks (pixels); ``None``: no smoothing.
        hysteresis: ``(margin, hold)`` of :class:`~facial_search.live.tracking.MatchHysteresis` (distance,
            updates); ``None``: the raw top-k of every update.
        embedding_filter: One Euro parameters for each track's embedding (smoothed, then re-normalised
            before the search), which steadies the distances the hysteresis sees; ``None``: raw embeddings.
        embed_every: embed (and search) a track every this many frames; in between its matches are kept.
            Default 3: 8 updates a second at 24 frames/s, plenty for matches held by the hysteresis, and it
            keeps the live path within 20% of the bare landmarker (the learned embedding costs ~5 ms/face).
        group_by_source: show k different pictures, each at its face nearest the track (as
            :meth:`~facial_search.index.MemeIndex.search`); ``False``: the k nearest faces.
        max_faces: most faces per frame.
        max_missing: frames a track may be missed before it ends.
        model_path: ``face_landmarker.task`` (default: found by :mod:`facial_search.io.assets`).
    """

    k: int = 3
    filter: OneEuroParams | None = field(default_factory=OneEuroParams)
    hysteresis: tuple[float, int] | None = (0.05, 4)  # 4 updates x 3 frames: a new top-1 holds 0.5 s at 24 fps
    embedding_filter: OneEuroParams | None = field(default_factory=lambda: OneEuroParams(1.0, 0.0, 1.0))
    embed_every: int = 3
    group_by_source: bool = True
    max_faces: int = 4
    max_missing: int = 5
    model_path: str | os.PathLike | None = None


@dataclass
class TrackedFace:
    """One face in one frame: its track id, smoothed face (box and landmarks), stable matches."""

    track: int
    face: object  # facial_search.vision.faces.Face, smoothed
    matches: list[ShownMatch]

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.face.box

    def to_json(self) -> dict:
        return {
            "track": self.track,
            "box": [int(v) for v in self.box],
            "matches": [{"id": m.id, "title": m.title, "distance": round(float(m.distance), 6)} for m in self.matches],
        }


@dataclass
class FrameResult:
    """What a :class:`LiveSession` found in one frame: the ``--log`` line (:meth:`to_json`)."""

    frame: int
    t: float
    faces: list[TrackedFace]

    def to_json(self) -> dict:
        return {"frame": self.frame, "t": round(self.t, 6), "faces": [f.to_json() for f in self.faces]}


class LiveSession:
    """Landmarks (VIDEO mode), tracks, smoothing and stable matches for successive frames of one stream.

    Args:
        search: an open :class:`~facial_search.pipeline.FacialSearch` (its index and embedder are used).
        config: :class:`LiveConfig`.

    Not thread-safe. A context manager (closes its landmarker, not ``search``).

    Attributes:
        timers: seconds spent per stage so far: ``landmarks``, ``track`` (association + filter),
            ``embed``, ``search`` (distances + hysteresis).
    """

    def __init__(self, search, config: LiveConfig | None = None):
        self.search = search
        self.config = config or LiveConfig()
        self.finder = FaceFinder.create_from_options(
            FaceFinderOptions(model_path=self.config.model_path, max_faces=self.config.max_faces, running_mode="video")
        )
        self.tracker = Tracker(self.config.filter, max_missing=self.config.max_missing)
        self._ids = np.asarray(search.index.ids)
        self._titles = [e.title for e in search.index.entries()]
        self._last_ms = -1
        self.timers = {"landmarks": 0.0, "track": 0.0, "embed": 0.0, "search": 0.0}

    def process(self, rgb: np.ndarray, t: float, frame: int) -> FrameResult:
        """Process one frame.

        Args:
            rgb: ``(H, W, 3) uint8`` RGB.
            t: timestamp, seconds, increasing (from the video).
            frame: frame number.
        """
        c = time.perf_counter
        t0 = c()
        ms = max(int(round(t * 1000)), self._last_ms + 1)  # VIDEO mode: strictly increasing milliseconds
        self._last_ms = ms
        faces = self.finder.detect_for_video(rgb, ms)
        t1 = c()
        tracks = self.tracker.update(faces, t, frame)
        t2 = c()
        due = [
            tr
            for tr in tracks
            if "matched_at" not in tr.data or frame - tr.data["matched_at"] >= self.config.embed_every
        ]
        if due and len(self._ids):
            emb = self.search.pipeline.embed(rgb, [tr.face for tr in due])
            if self.config.embedding_filter is not None:
                emb = np.stack([self._smooth_embedding(tr, e, t) for tr, e in zip(due, emb, strict=True)])
            t3 = c()
            dist = self.search.index.distances(emb)
            face_rows = None
            if self.config.group_by_source:  # the hysteresis then follows pictures, not faces
                dist, face_rows = group_min(dist, self.search.index.group_layout())
            for i, (tr, d) in enumerate(zip(due, dist, strict=True)):
                if tr.hysteresis is None:
                    margin, hold = self.config.hysteresis or (0.0, 1)
                    tr.hysteresis = MatchHysteresis(self.config.k, margin, hold)
                rows, dd = tr.hysteresis.update(d)
                if face_rows is not None:
                    rows = face_rows[i][rows]
                tr.data["matches"] = [
                    ShownMatch(int(self._ids[r]), self._titles[r], float(x)) for r, x in zip(rows, dd, strict=True)
                ]
                tr.data["matched_at"] = frame
            t4 = c()
            self.timers["embed"] += t3 - t2
            self.timers["search"] += t4 - t3
        self.timers["landmarks"] += t1 - t0
        self.timers["track"] += t2 - t1
        return FrameResult(frame, t, [TrackedFace(tr.id, tr.face, tr.data.get("matches", [])) for tr in tracks])

    def _smooth_embedding(self, track, embedding: np.ndarray, t: float) -> np.ndarray:
        filt = track.data.get("embedding_filter")
        if filt is None:
            filt = track.data["embedding_filter"] = OneEuroFilter(self.config.embedding_filter)
        e = filt(embedding, t).astype(np.float32)
        n = float(np.linalg.norm(e))
        return e / n if n > 0 else embedding

    def close(self) -> None:
        self.finder.close()

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def annotate(
    bgr: np.ndarray,
    result: FrameResult,
    thumbs: ThumbnailCache | None,
    fps: float | None = None,
    tesselation: bool = False,
) -> np.ndarray:
    """Draw ``result`` (meshes, boxes, track ids, match thumbnails) and ``fps`` on ``bgr`` in place; returns it.
    ``tesselation``: draw the full FaceMesh tesselation, not only landmark dots and contours (slower)."""
    for f in result.faces:
        pts = f.face.landmarks_px() if f.face.landmarks is not None else None
        draw_face(bgr, f.track, f.box, pts, f.matches, thumbs, tesselation=tesselation)
    if fps is not None:
        draw_fps(bgr, fps)
    return bgr


class FpsMeter:
    """Processing frame rate over the last ``window`` frames (wall clock: it measures us, not the video)."""

    def __init__(self, window: int = 30):
        self._times: deque = deque(maxlen=window + 1)

    def tick(self) -> float:
        self._times.append(time.perf_counter())
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(1e-9, self._times[-1] - self._times[0])


# ---------------------------------------------------------------------------------------------------------
# Frames out
# ---------------------------------------------------------------------------------------------------------


class VideoSink:
    """Writes frames to a video file in a background thread (same size and frame rate as the input).

    ``.mp4``/``.m4v``/``.mov`` are MPEG-4 Part 2 (``mp4v``), ``.avi`` Motion JPEG.

    Raises:
        LiveError: the file cannot be opened for writing (or a write failed, at :meth:`close`).
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        fourcc = "MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*fourcc), float(fps), tuple(size))
        if not self._writer.isOpened():
            raise LiveError(f"{self.path}: cannot write a video there (use .mp4 or .avi in a folder that exists)")
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
        self._queue.put(bgr)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._writer.release()
        if self._error is not None:
            raise LiveError(f"{self.path}: writing the video failed: {self._error}")


# ---------------------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------------------


def live_frames(source: FrameSource, session: LiveSession) -> Iterator[tuple[VideoFrame, FrameResult]]:
    """Every frame of ``source`` with what ``session`` found in it, in order (a generator)."""
    for frame in source:
        yield frame, session.process(frame.rgb, frame.t, frame.index)


def config_from_args(args) -> LiveConfig:
    """The :class:`LiveConfig` of ``facial-search live`` arguments."""
    p = OneEuroParams()
    params = OneEuroParams(
        min_cutoff=p.min_cutoff if args.min_cutoff is None else args.min_cutoff,
        beta=p.beta if args.beta is None else args.beta,
        d_cutoff=p.d_cutoff if args.d_cutoff is None else args.d_cutoff,
    )
    if args.k < 1:
        raise LiveError("-k must be at least 1")
    return LiveConfig(
        k=args.k,
        filter=None if args.no_filter else params,
        hysteresis=None if args.no_hysteresis else LiveConfig.hysteresis,
        embedding_filter=None if args.no_hysteresis else LiveConfig().embedding_filter,
        embed_every=max(1, args.embed_every),
        group_by_source=not args.all_faces,
        model_path=args.model,
    )


def _has_display() -> bool:
    return sys.platform in ("win32", "darwin") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@dataclass
class LiveStats:
    """Totals of one :func:`run_live`-style run."""

    frames: int = 0
    frames_with_faces: int = 0
    seconds: float = 0.0
    stages: dict = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


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
        window: show an OpenCV window; any key (or closing it) stops. Video files play at their own pace.
        draw: annotate frames (default: when there is a window or an output).

    Returns:
        :class:`LiveStats` with per-stage seconds (``decode`` and ``encode`` run in background threads).
    """
    draw = (window or output is not None) if draw is None else draw
    thumbs = ThumbnailCache(session.search.index) if draw else None
    sink = VideoSink(output, source.fps, source.size) if output else None
    log_file = open(log, "w", encoding="utf-8") if log else None  # noqa: SIM115 - closed in finally
    stats, meter, overlay_s, log_s = LiveStats(), FpsMeter(), 0.0, 0.0
    title = f"facial-search live: {source.name} (any key quits)"
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
            if window:
                cv2.imshow(title, frame.bgr)
                wait = 1
                if not source.is_camera:  # play a file at its own pace
                    wait = max(1, int((frame.t - (time.perf_counter() - start)) * 1000))
                if cv2.waitKey(wait) != -1 or cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1:
                    break
    finally:
        stats.seconds = time.perf_counter() - start
        if log_file is not None:
            log_file.close()
        if sink is not None:
            sink.close()
        if window:
            cv2.destroyAllWindows()
            cv2.waitKey(1)
    stats.stages = dict(session.timers, overlay=overlay_s, write_log=log_s, decode=source.decode_seconds)
    if sink is not None:
        stats.stages["encode"] = sink.encode_seconds
    return stats


def run_live(args) -> int:
    """``facial-search live``: see ``facial-search live --help``. Returns the exit status (0).

    Raises:
        LiveError: no camera, an unreadable video, an output that cannot be written, no display for the
            window.
        FileNotFoundError, IndexFormatError, EmbedderMismatchError, AssetError: from opening the index.
    """
    from facial_search.pipeline import FacialSearch

    window = not args.no_window
    if window and not _has_display():
        raise LiveError("no display for the window: run with --no-window (and --output / --log)")
    config = config_from_args(args)
    for out in (args.output, args.log):
        if out and not Path(out).resolve().parent.is_dir():
            raise LiveError(f"{out}: its folder does not exist")
    if args.video is not None:
        source = FrameSource.video(args.video, mirror=bool(args.mirror))
    else:
        cam = 0 if args.camera is None else args.camera
        source = FrameSource.camera(cam, mirror=True if args.mirror is None else args.mirror)
    with source, FacialSearch.open(args.index, embedder=args.embedder, model_path=args.model) as fs:
        with LiveSession(fs, config) as session:
            stats = run_stream(source, session, output=args.output, log=args.log, window=window)
    share = stats.frames_with_faces / stats.frames if stats.frames else 0.0
    wrote = ", ".join(str(p) for p in (args.output, args.log) if p)
    print(
        f"{source.name}: {stats.frames} frames, a face in {share:.0%}, {stats.fps:.1f} frames/s"
        + (f"; wrote {wrote}" if wrote else "")
    )
    return 0
