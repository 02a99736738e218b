"""Sampled frames -> face tracks: MediaPipe FaceLandmarker in VIDEO mode on every sampled frame, the live
command's :class:`~facial_search.live.tracking.Tracker` for track ids, each seen face embedded.

Streams: a track's samples are handed on (:func:`sample_tracks` yields them) as soon as the track ends, and
only samples are kept (a 64-d embedding, 52 blendshapes, a box, a hash: about 0.5 kB each, 7 MB for an hour
of one face at 4 samples/s), never frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from facial_search.index.dedupe import face_dhash
from facial_search.live.tracking import Tracker
from facial_search.moments.decode import SampledFrame
from facial_search.vision.faces import NUM_BLENDSHAPES, FaceFinder

#: A track survives this many sampled frames in a row without its face (0.5 s at the default 250 ms) before
#: it ends; a face that comes back later is a new track.
MAX_MISSING_SAMPLES = 2


@dataclass
class TrackSamples:
    """The samples of one face track, in time order.

    Attributes:
        track: track id within the video (0, 1, ... in order of first appearance; never reused).
        t: ``(n,)`` seconds from the video's first frame.
        boxes: ``n`` boxes ``(x, y, w, h)``, pixels of the upright full-size frame.
        embeddings: ``(n, D) float32`` unit-norm.
        blendshapes: ``(n, 52) float32`` (NaN rows for a face without them).
        hashes: ``n`` picture hashes (:func:`~facial_search.index.dedupe.face_dhash`, 16 hex digits).
    """

    track: int
    t: list[float] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    blendshapes: list[np.ndarray] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.t)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(t (n,) float64, embeddings (n, D) float32, blendshapes (n, 52) float32)``."""
        return np.asarray(self.t, np.float64), np.stack(self.embeddings), np.stack(self.blendshapes)


def _full_size(box, scale: float) -> tuple[int, int, int, int]:
    if scale == 1.0:
        return tuple(int(v) for v in box)
    return tuple(int(round(v * scale)) for v in box)


def sample_tracks(
    frames: Iterable[SampledFrame], finder: FaceFinder, embedder, *, max_missing: int = MAX_MISSING_SAMPLES
) -> Iterator[TrackSamples]:
    """Track and embed the faces of ``frames`` (increasing ``t``), yielding each track's samples when it ends
    (missing for more than ``max_missing`` frames) and the rest after the last frame.

    Args:
        frames: sampled frames (:func:`facial_search.moments.decode.sample_frames`).
        finder: a VIDEO-mode :class:`FaceFinder` (``running_mode="video"``), fresh for this video.
        embedder: any embedder (``embed(rgb, faces) -> (n, D)``).

    Landmarks are not smoothed (the One Euro filter suits 30 frames/s display, not 4 samples/s, where it
    would lag behind a change of expression).
    """
    tracker = Tracker(None, max_missing=max_missing)
    live: dict[int, TrackSamples] = {}
    last_ms = -1
    none = np.full(NUM_BLENDSHAPES, np.nan, np.float32)
    for n, frame in enumerate(frames):
        ms = max(last_ms + 1, int(round(frame.t * 1000)))
        last_ms = ms
        seen = tracker.update(finder.detect_for_video(frame.rgb, ms), frame.t, n)
        for tr in tracker.ended:
            done = live.pop(tr.id, None)
            if done is not None:
                yield done
        if not seen:
            continue
        emb = embedder.embed(frame.rgb, [tr.face for tr in seen])
        for tr, e in zip(seen, emb, strict=True):
            s = live.setdefault(tr.id, TrackSamples(tr.id))
            s.t.append(frame.t)
            s.boxes.append(_full_size(tr.face.box, frame.scale))
            s.embeddings.append(np.asarray(e, np.float32))
            bs = tr.face.blendshapes
            s.blendshapes.append(np.asarray(bs, np.float32) if bs is not None else none)
            s.hashes.append(face_dhash(frame.rgb, tr.face.box))
    yield from (live[k] for k in sorted(live))
