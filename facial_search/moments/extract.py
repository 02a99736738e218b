"""A video file -> its moments: decode every ``sample_ms`` (:mod:`.decode`), track and embed the faces
(:mod:`.sampling`), cut each track into moments (:mod:`.segment`). Streams the file: memory holds one frame and
the samples of the tracks still open, whatever the video's length.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from facial_search.moments.decode import MAX_SIDE, VideoError, probe, sample_frames
from facial_search.moments.sampling import MAX_MISSING_SAMPLES, sample_tracks
from facial_search.moments.segment import MAX_SECONDS, MIN_SECONDS, THRESHOLD, Moment, cut_track
from facial_search.vision.faces import FaceFinder, FaceFinderOptions

#: Default sampling interval of ``facial-search index --sample-ms``, milliseconds.
SAMPLE_MS = 250


@dataclass
class VideoMoments:
    """What :func:`video_moments` found in one video.

    Attributes:
        moments: every track's moments, ordered by start time (then track).
        seconds: seconds of video decoded (the last sampled frame's time).
        samples: sampled frames.
        info: the header facts (:class:`~facial_search.moments.decode.VideoInfo`).
    """

    moments: list[Moment] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0
    info: object = None


def prefetched(items: Iterator, size: int = 4) -> Iterator:
    """``items`` produced in a background thread, at most ``size`` ahead (so decoding, which PyAV runs without
    the GIL, overlaps the landmarker); the producer's exception is raised here, at its place. Closing the
    returned generator early stops the producer (and closes ``items``)."""
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    end = object()

    def run():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as e:  # handed to the consumer
            q.put((end, e))
            return
        finally:
            if hasattr(items, "close"):
                items.close()
        q.put((end, None))

    thread = threading.Thread(target=run, name="facial-search-video-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let a blocked producer see the stop
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)


def video_moments(
    path: str | os.PathLike,
    embedder,
    *,
    sample_ms: int = SAMPLE_MS,
    model_path: str | os.PathLike | None = None,
    max_faces: int = 8,
    max_side: int = MAX_SIDE,
    threshold: float = THRESHOLD,
    min_s: float = MIN_SECONDS,
    max_s: float = MAX_SECONDS,
    on_progress: Callable[[float], None] | None = None,
) -> VideoMoments:
    """The moments of every face in the video ``path``.

    Args:
        embedder: any embedder (``embed(rgb, faces)``), e.g. a :class:`~facial_search.pipeline.Pipeline`'s.
        sample_ms: sampling interval, milliseconds (>= 1).
        model_path: the landmarker model (default found by :mod:`facial_search.io.assets`); a fresh VIDEO-mode
            landmarker is made for the video and closed at the end.
        max_side: frames are scaled down to this many pixels a side for the landmarker (boxes stay full size).
        threshold, min_s, max_s: the moment rule (:mod:`facial_search.moments.segment`).
        on_progress: called with the seconds of video done after each sampled frame.

    Returns:
        :class:`VideoMoments`; ``moments`` is empty when no face was found.

    Raises:
        InputNotFoundError: no such file. NotAnImageError: a folder, an empty file. NoVideoStreamError: no
            video stream (audio only). VideoError: unreadable, or no frame decodes (zero frames).
        ValueError: ``sample_ms`` below 1.
    """
    if isinstance(sample_ms, bool) or not isinstance(sample_ms, int) or sample_ms < 1:
        raise ValueError(f"sample_ms must be a whole number >= 1 (got {sample_ms!r})")
    info = probe(path)
    every_s = sample_ms / 1000
    out = VideoMoments(info=info)

    def frames():
        for f in prefetched(sample_frames(path, every_s, max_side=max_side)):
            out.samples += 1
            out.seconds = f.t
            yield f
            if on_progress is not None:
                on_progress(f.t)

    options = FaceFinderOptions(model_path=model_path, max_faces=max_faces, running_mode="video")
    with FaceFinder.create_from_options(options) as finder:
        for tr in sample_tracks(frames(), finder, embedder, max_missing=MAX_MISSING_SAMPLES):
            t, emb, bs = tr.arrays()
            out.moments += cut_track(
                tr.track, t, emb, bs, tr.boxes, tr.hashes, every_s=every_s, duration=info.duration or None,
                threshold=threshold, min_s=min_s, max_s=max_s,
            )  # fmt: skip
    if out.samples == 0:
        raise VideoError(f"{path}: no frame could be decoded")
    out.moments.sort(key=lambda m: (m.t_start, m.track))
    return out
