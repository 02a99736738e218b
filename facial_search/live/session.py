"""The live session: one frame in, tracked faces with stable matches out (no I/O).

    frame (RGB, timestamp) ──FaceLandmarker VIDEO mode──▶ faces
        ──Tracker (track ids, One Euro filter on 478 landmarks)──▶ tracks
        ──embedder (+ One Euro on each track's embedding) + distances to the index's faces
        ──MatchHysteresis──▶ stable top-k per track  (:class:`FrameResult`)

The distances: on a :class:`~facial_search.index.MemeIndex` (the file store) the exact distances to every
face (:meth:`MemeIndex.distances <facial_search.index.MemeIndex.distances>`, a fast path); on any other store
(:class:`facial_search.index.base.Store`, e.g. Milvus) the :data:`CANDIDATES` + k nearest of a
:meth:`~facial_search.index.base.Store.search`, with every face outside them at an infinite distance (a shown
match that falls out of them is replaced at once).

:class:`LiveSession` is the reusable core; :func:`annotate` draws a :class:`FrameResult` on a frame. Frames come
from :class:`facial_search.io.video.FrameSource`; :mod:`facial_search.live.run` runs a whole stream (window,
annotated video, JSON lines). The One Euro filter is Casiez, Roussel & Vogel's (CHI 2012,
:mod:`facial_search.live.one_euro`).

Timestamps are the video's (seconds), never the wall clock, except for a camera, whose frames are stamped with
their capture time.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from facial_search.errors import OptionError
from facial_search.index.store import MemeIndex, group_min
from facial_search.live.one_euro import OneEuroFilter, OneEuroParams
from facial_search.live.overlay import ShownMatch, ThumbnailCache, draw_face, draw_fps
from facial_search.live.tracking import MatchHysteresis, Tracker
from facial_search.vision.faces import FaceFinder, FaceFinderOptions

#: Neighbours beyond k a search on a store other than :class:`MemeIndex` asks for, per track and update: the
#: candidates the hysteresis chooses among (a shown match is kept while it stays among them).
CANDIDATES = 32


def _need(ok: bool, name: str, value, need: str) -> None:
    if not ok:
        raise OptionError(f"{name} = {value!r}: {need}")


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

    Raises:
        OptionError: a value out of its range (``k`` or ``embed_every`` under 1, a negative hysteresis margin, a
            hold under 1 update, ``max_faces`` under 1, ``max_missing`` under 0); bad One Euro parameters raise
            it from :class:`~facial_search.live.one_euro.OneEuroParams`.
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

    def __post_init__(self):
        from facial_search.index.store import MAX_K

        _need(not isinstance(self.k, int | np.integer) or self.k <= MAX_K, "k", self.k, f"must be at most {MAX_K:,}")
        for name in ("k", "embed_every", "max_faces"):
            value = getattr(self, name)
            _need(isinstance(value, int | np.integer) and value >= 1, name, value, "must be a whole number, at least 1")
        ok = isinstance(self.max_missing, int | np.integer) and self.max_missing >= 0
        _need(ok, "max_missing", self.max_missing, "must be a whole number, at least 0")
        if self.hysteresis is not None:
            margin, hold = self.hysteresis
            _need(math.isfinite(margin) and margin >= 0, "hysteresis margin", margin, "must be at least 0")
            _need(
                isinstance(hold, int | np.integer) and hold >= 1, "hysteresis hold", hold, "must be at least 1 update"
            )


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
        search: an open :class:`~facial_search.pipeline.FacialSearch` (its index, any store, and its embedder
            are used).
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
        self._exact = isinstance(search.index, MemeIndex)  # the fast path: distances to every face
        if self._exact:
            self._ids = np.asarray(search.index.ids)
            self._titles = [e.title for e in search.index.entries()]
            self._n = len(self._ids)
        else:  # hysteresis rows are slots: one per face (or picture, when grouping) seen among the candidates
            self._n = search.index.ntotal
            self._ids, self._titles = [], []  # of each slot: the entry id last found there, its title
            self._slot_of: dict[object, int] = {}  # by entry id, or by source when grouping
            self._key_of_id: dict[int, object] = {}
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
        if due and self._n:
            emb = self.search.pipeline.embed(rgb, [tr.face for tr in due])
            if self.config.embedding_filter is not None:
                emb = np.stack([self._smooth_embedding(tr, e, t) for tr, e in zip(due, emb, strict=True)])
            t3 = c()
            face_rows = None
            if self._exact:
                dist = self.search.index.distances(emb)
                if self.config.group_by_source:  # the hysteresis then follows pictures, not faces
                    dist, face_rows = group_min(dist, self.search.index.group_layout())
            else:
                dist, face_rows = self._candidates(emb)
            for i, (tr, d) in enumerate(zip(due, dist, strict=True)):
                if tr.hysteresis is None:
                    margin, hold = self.config.hysteresis or (0.0, 1)
                    tr.hysteresis = MatchHysteresis(self.config.k, margin, hold)
                rows, dd = tr.hysteresis.update(d)
                if face_rows is not None:
                    rows = face_rows[i][rows]
                tr.data["matches"] = [
                    ShownMatch(int(self._ids[r]), self._titles[r], float(x))
                    for r, x in zip(rows, dd, strict=True)
                    if np.isfinite(x)
                ]
                tr.data["matched_at"] = frame
            t4 = c()
            self.timers["embed"] += t3 - t2
            self.timers["search"] += t4 - t3
        self.timers["landmarks"] += t1 - t0
        self.timers["track"] += t2 - t1
        return FrameResult(frame, t, [TrackedFace(tr.id, tr.face, tr.data.get("matches", [])) for tr in tracks])

    def _candidates(self, emb: np.ndarray) -> tuple[np.ndarray, None]:
        """A store other than :class:`MemeIndex`: ``(Q, slots)`` distances over every slot seen so far, from a
        :meth:`~facial_search.index.base.Store.search` of the ``k +`` :data:`CANDIDATES` nearest (``inf`` for the
        slots not among a query's candidates)."""
        index, group = self.search.index, self.config.group_by_source
        dist, ids = index.search(emb, min(self.config.k + CANDIDATES, max(1, self._n)), group_by_source=group)
        found = []
        for drow, irow in zip(dist, ids, strict=True):
            row = []
            for d, i in zip(drow, irow, strict=True):
                if i < 0:
                    continue
                i = int(i)
                key = self._key_of_id.get(i)
                if key is None:
                    entry = index.entry(i)
                    key = self._key_of_id[i] = ("source", entry.source) if group else i
                    if key not in self._slot_of:
                        self._slot_of[key] = len(self._ids)
                        self._ids.append(i)
                        self._titles.append(entry.title)
                slot = self._slot_of[key]
                self._ids[slot] = i  # a picture's nearest face may change (its source, so its title, does not)
                row.append((slot, float(d)))
            found.append(row)
        out = np.full((len(emb), len(self._ids)), np.inf, dtype=np.float32)
        for q, row in enumerate(found):
            for slot, d in row:
                out[q, slot] = d
        return out, None

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
